"""Shared record-file builder for the reward tests."""

from __future__ import annotations

import json
from pathlib import Path

KEYS = ["Paris is the capital of France.", "The lazy dog.", "Jupiter is the largest planet in the solar system.",
        "hello there, how are you?", "def add(a, b): return a + b"]


def write_records(path: Path, n: int = 12) -> Path:
    lines = []
    for i in range(n):
        if i == 5:
            lines.append({"task": "qa", "query": "no candidates here", "pos": [], "neg": [], "query_id": i})
            continue
        task = ["qa", "icl", "chat"][i % 3]
        rec = {"task": task, "query": f"question {i}: what is the capital of France?", "answers": [KEYS[i % 5][:12]],
               "query_id": i}
        if task == "chat":
            rec["history"] = KEYS[: 2 + i % 3]
        else:
            rec["pos"], rec["neg"] = [KEYS[i % 5]], KEYS[(i % 5) + 1 :] or KEYS[:2]
        lines.append(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return path
