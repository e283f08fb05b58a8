"""The `score` command's own checks (the scoring itself: tests/reward)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llm_embedder.cli import app

runner = CliRunner()


class Reached(Exception):
    """score_file was called: every check of the command had passed."""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fast"], "--fast is for CPU, and without --device this machine's CUDA is used (on CUDA the LLM already "
                     "runs in bf16): drop --fast, or give --device cpu"),
        (["--fast", "--device", "cuda"], "--fast is for CPU, not --device cuda (on CUDA the LLM already runs in "
                                         "bf16): drop --fast, or give --device cpu"),
        (["--fast-mode", "int8", "--device", "cuda:0"], "--fast-mode is for CPU, not --device cuda:0 (on CUDA the LLM "
                                                        "already runs in bf16): drop --fast-mode, or give --device "
                                                        "cpu"),
        (["--fast", "--device", "cpu"], None),  # goes on
        (["--device", "cuda"], None),
    ],
)
def test_fast_on_cuda_is_refused_before_the_records_are_read_and_the_llm_loads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str | None) -> None:
    """score --fast on a CUDA machine read and checked every record, then loaded the LLM, and only then did the
    LLM refuse its fast mode. A CUDA device is pretended, as the device checks' tests do."""
    from llm_embedder import reward

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(reward, "score_file", reached)
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"query": "q", "task": "qa", "pos": ["a"], "neg": ["b"], "answers": ["x"]}) + "\n")
    result = runner.invoke(app, ["score", str(records), "--out", str(tmp_path / "out.jsonl"), *args])
    if message is None:
        assert isinstance(result.exception, Reached), result.output
    else:
        assert isinstance(result.exception, ValueError), result.output
        assert str(result.exception) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
