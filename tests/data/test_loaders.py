"""FlagEmbedding JSONL and BEIR folders load into validated suite records (tiny fixtures written here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_embedder.data.loaders import format_key, load_beir, load_corpus, load_flag_jsonl
from llm_embedder.io import DataError


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


CORPUS = [{"title": "Paris", "text": "capital of France"}, {"title": "Rome", "text": "capital of Italy"},
          {"text": "no title here"}]


def test_flag_train_and_eval_with_corpus(tmp_path: Path) -> None:
    corpus = jsonl(tmp_path / "corpus.json", CORPUS)
    train = jsonl(tmp_path / "train.json", [
        {"query": "capital of france?", "pos": ["Paris capital of France"], "neg": ["x"], "task": "qa",
         "teacher_scores": [1.0, 0.0]},
        {"query": "italy?", "pos": ["Rome"], "neg": ["y"]},  # task read from the first line
    ])
    records = load_flag_jsonl(train)
    assert [r["task"] for r in records] == ["qa", "qa"] and [r["query_id"] for r in records] == [0, 1]
    evaluation = jsonl(tmp_path / "test.json", [{"query": "italy?", "qid": 7, "pos_index": [1], "neg_index": [2],
                                                 "answers": ["Rome"]}])
    [record] = load_flag_jsonl(evaluation, corpus=corpus, task="qa")
    assert record["query_id"] == 7
    assert record["pos"] == ["Rome capital of Italy"] and record["neg"] == ["no title here"]
    assert format_key(load_corpus(corpus)[0], "{text}") == "capital of France"


def test_flag_errors_name_file_line_field(tmp_path: Path) -> None:
    corpus = jsonl(tmp_path / "corpus.json", CORPUS)
    bad = jsonl(tmp_path / "bad.json", [{"query": "q", "task": "qa", "pos_index": [9]}])
    with pytest.raises(DataError, match=r"bad\.json:1:pos_index"):
        load_flag_jsonl(bad, corpus=corpus)
    no_task = jsonl(tmp_path / "nt.json", [{"query": "q", "pos": [], "neg": []}])
    with pytest.raises(DataError, match=r"nt\.json:1:task"):
        load_flag_jsonl(no_task)
    wrong = jsonl(tmp_path / "wrong.json", [{"query": "", "task": "qa", "pos": ["p"], "neg": []}])
    with pytest.raises(DataError, match=r"wrong\.json:1:query"):
        load_flag_jsonl(wrong)


def beir(folder: Path, qrels: str) -> Path:
    jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Paris", "text": "capital of France"},
                                    {"_id": "d2", "title": "", "text": "Rome is in Italy"}])
    jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "where is rome?"}, {"_id": "q2", "text": "france?"}])
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return folder


def test_beir_folder(tmp_path: Path) -> None:
    folder = beir(tmp_path / "scifact", "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t2\nq2\td2\t0\n")
    records, corpus = load_beir(folder, split="test", task="qa")
    assert [c["doc_id"] for c in corpus] == ["d1", "d2"] and corpus[1]["id"] == 1
    assert [(r["query"], r["pos_index"], r["source_id"]) for r in records] == [
        ("where is rome?", [1], "q1"), ("france?", [0], "q2")]
    assert records[1]["pos"] == ["Paris capital of France"] and records[0]["pos"] == ["Rome is in Italy"]


def test_beir_errors(tmp_path: Path) -> None:
    folder = beir(tmp_path / "b1", "query-id\tcorpus-id\tscore\nq1\tmissing\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:2:corpus-id"):
        load_beir(folder)
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        load_beir(folder, split="dev")
