"""Helpers shared by the training tests (tiny task files, trainers changed for a test)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from llm_embedder.train import trainer as trainer_module


def write_task_file(path: Path, task: str, n: int, *, scores: bool, n_neg: int = 3, history: bool = False) -> Path:
    """``n`` records of ``task``; teacher scores favour the positive (or the first history turn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            record = {"query": f"{task} question number {i}", "task": task, "query_id": i}
            candidates = [f"{task} relevant passage {i}"] + [f"{task} unrelated text {i} {j}" for j in range(n_neg)]
            if history:
                record["history"] = candidates
            else:
                record["pos"], record["neg"] = candidates[:1], candidates[1:]
            if scores:
                record["teacher_scores"] = [0.0] + [-0.5 - j for j in range(n_neg)]
            handle.write(json.dumps(record) + "\n")
    return path


@contextmanager
def trainers_changed(monkeypatch: pytest.MonkeyPatch, change: Callable[[Any], None]) -> Iterator[None]:
    """Within the block, every trainer ``train`` builds is first given to ``change`` (a callback added, a save cut),
    as a run interrupted or stopped at a chosen point needs; ``build_trainer`` is restored after it."""
    original = trainer_module.build_trainer

    def changed(config, files):
        built = original(config, files)
        change(built)
        return built

    with monkeypatch.context() as patch:
        patch.setattr(trainer_module, "build_trainer", changed)
        yield
