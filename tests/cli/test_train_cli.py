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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "--lr: must be greater than 0, got 0.0"),
        (["--temperature", "-1"], "--temperature: must be greater than 0, got -1.0"),
        (["--base-mix", "1"], "--base-mix: must be in [0, 1), got 1.0"),
        (["--self-paced", "--no-homogeneous"],
         "--self-paced needs homogeneous batches (one task per step); drop --no-homogeneous"),
        (["--plain-task", "chats"], "--plain-task: unknown task 'chats'; known tasks: qa, icl, chat, lrlm, tool, "
                                    "convsearch"),
        (["--loss-override", "nope=kl_distill"], "--loss-override: unknown task 'nope'; known tasks: qa, icl, chat, "
                                                 "lrlm, tool, convsearch"),
        (["--loss-override", "qa=kl"], "--loss-override: qa=kl: unknown loss; known: contrastive, kl_distill, "
                                       "stable_distill"),
        (["--loss-override", "qa"], "--loss-override 'qa': expected TASK=LOSS, e.g. qa=kl_distill"),
        (["--query-max-length", "1000"], "--query-max-length 1000 is more than model {model} can encode: 512 "
                                         "positions (max_position_embeddings of its config); give at most 512"),
    ],
)
def test_train_errors_name_the_option_not_the_setting(tmp_path: Path, tiny_embedder_dir: Path, args: list[str],
                                                      message: str) -> None:
    """A bad train option was named by its TrainConfig setting (``lr: must be greater than 0``, ``plain_tasks:
    unknown task``), as a train.yaml key is: the command line names the option it was given by."""
    result = runner.invoke(app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--base",
                                 str(tiny_embedder_dir), *args])
    assert isinstance(result.exception, ValueError), result.output
    assert str(result.exception) == message.format(model=tiny_embedder_dir)
    assert not (tmp_path / "out").exists()


def test_a_train_yaml_value_is_still_named_by_its_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("lr: 0\n")
    result = runner.invoke(app, ["train", "--config", str(config), "--data", str(tmp_path), "--out",
                                 str(tmp_path / "out")])
    assert str(result.exception) == f"{config}: lr: must be greater than 0, got 0"
