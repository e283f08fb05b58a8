"""Helpers shared by the training tests (tiny task files)."""

from __future__ import annotations

import json
from pathlib import Path


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
