"""The `train` and `mine` commands' own checks (training and mining themselves: tests/train)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.io import read_jsonl

runner = CliRunner()


def test_mine_refuses_an_existing_out_before_the_model_loads_unless_overwrite(
        tmp_path: Path, tiny_embedder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mine replaced an existing --out without a word, where `data import` refuses unless given --overwrite."""
    from llm_embedder.embedder import Embedder

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"passage number {i}"}) + "\n" for i in range(6)))
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"query": "question", "task": "qa", "pos": ["passage number 1"], "query_id": 0}) + "\n")
    out = tmp_path / "mined.jsonl"
    out.write_text("earlier negatives\n")
    args = ["mine", "--model", str(tiny_embedder_dir), "--data", str(data), "--corpus", str(corpus), "--out", str(out),
            "--top-k", "2"]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before --out was checked")

    with monkeypatch.context() as patch:
        patch.setattr(Embedder, "__init__", no_loading)
        result = runner.invoke(app, args)
    assert isinstance(result.exception, FileExistsError), result.output
    assert str(result.exception) == f"--out {out} exists; give --overwrite to replace it"
    assert out.read_text() == "earlier negatives\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl", "mined.jsonl", "qa.jsonl"]  # no work, lock
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out)
    assert len(record["neg"]) == 2
