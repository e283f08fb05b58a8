"""Hard-negative mining: positives never come back as negatives; answer-bearing passages can be filtered."""

from __future__ import annotations

import json
from pathlib import Path

from llm_embedder.io import read_jsonl
from llm_embedder.train.mine import select_negatives


def test_select_negatives_excludes_positives_and_answers() -> None:
    texts = ["gold passage", "Paris is the capital", "other one", "other two", "gold passage"]
    record = {"pos": ["gold passage"], "pos_index": [0], "answers": ["paris"]}
    assert select_negatives([0, 1, 2, 3, 4], texts, record, 10, filter_answers=False) == [1, 2, 3]
    assert select_negatives([0, 1, 2, 3, 4], texts, record, 10, filter_answers=True) == [2, 3]
    assert select_negatives([0, 1, 2, 3, 4], texts, record, 1, filter_answers=True) == [2]


def test_mine_cli(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    corpus = tmp_path / "corpus.jsonl"
    passages = [{"title": f"T{i}", "text": f"passage number {i} about topic {i % 3}"} for i in range(12)]
    passages.append({"title": "Capital", "text": "the answer is Paris"})
    corpus.write_text("".join(json.dumps(p) + "\n" for p in passages))
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"query": "topic 1 question", "task": "qa", "pos": ["T1 passage number 1 about topic 1"],
                                "neg": [], "answers": ["paris"], "teacher_scores": [1.0], "query_id": 0}) + "\n")
    out = tmp_path / "mined.jsonl"
    result = CliRunner().invoke(app, ["mine", "--model", str(tiny_embedder_dir), "--data", str(data), "--corpus",
                                      str(corpus), "--out", str(out), "--top-k", "20", "--filter-answers"])
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out)
    assert "teacher_scores" not in record and len(record["neg"]) == 11  # 13 minus the positive and the answer
    assert "T1 passage number 1 about topic 1" not in record["neg"]
    assert "Capital the answer is Paris" not in record["neg"]
    assert record["neg_index"] and 1 not in record["neg_index"] and 12 not in record["neg_index"]
