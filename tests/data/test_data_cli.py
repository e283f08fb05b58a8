"""`llm-embedder data build` / `data check` through the real typer app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app

runner = CliRunner()


def test_check_reports_problems_and_exits_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "", "task": "qa", "query_id": 0, "pos": [], "neg": []}) + "\n")
    result = runner.invoke(app, ["data", "check", str(bad)])
    assert result.exit_code == 1
    assert "bad.jsonl:1:query: empty query" in result.output


def test_check_prints_summary_for_valid_file(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"query": "q", "task": "tool", "query_id": 0, "pos": ["a"], "neg": ["b", "c"],
                                "teacher_scores": [1, 0, 0]}) + "\n")
    result = runner.invoke(app, ["data", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "tool" in result.output and "2.00" in result.output and "all" in result.output


@pytest.mark.integration
def test_build_one_task(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "build", "--out", str(tmp_path), "--task", "tool", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tool" / "corpus.jsonl").exists() and json.loads((tmp_path / "manifest.json").read_text())[
        "seed"] == 3
    check = runner.invoke(app, ["data", "check", *map(str, sorted((tmp_path / "tool").glob("*.jsonl")))])
    assert check.exit_code == 0, check.output
