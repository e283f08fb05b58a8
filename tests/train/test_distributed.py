"""`torchrun --nproc_per_node 2 -m llm_embedder train` on CPU (gloo): both ranks train on the same task at
every step (homogeneous batches, recipe §2.4), each on its own slice of the global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llm_embedder.train.card import read_step_log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_torchrun_two_ranks_same_task_every_step(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path) -> None:
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "llm_embedder", "train",
        "--data", str(data_dir), "--data", str(data_dir / "tool" / "train.jsonl"), "--out", str(out),
        "--base", str(tiny_embedder_dir), "--max-steps", "5", "--batch-size", "2", "--group-size", "3",
        "--lr", "1e-3", "--save-steps", "5", "--query-max-length", "32", "--key-max-length", "32",
        "--self-paced",  # its per-task loss average is all-reduced, so both ranks scale the lr alike
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0 = read_step_log(out / "logs" / "steps.rank0.jsonl")
    rank1 = read_step_log(out / "logs" / "steps.rank1.jsonl")
    assert [r["step"] for r in rank0] == [r["step"] for r in rank1] == [1, 2, 3, 4, 5]
    for a, b in zip(rank0, rank1, strict=True):
        assert (a["rank"], b["rank"]) == (0, 1)
        assert a["dataset"] == b["dataset"] and a["task"] == b["task"]
        if a["task"] in ("qa", "tool"):  # gathered losses: every rank computes the same global loss
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    card = (out / "TRAINING_CARD.md").read_text()
    assert "Processes: 2" in card and "self-paced lr True" in card
    prompts = json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts["tool.query"] == "Transform this user request for fetching helpful tool descriptions: "
