"""Train a model into a directory once per set of inputs: the demo's models and the ablations share this.

A model already trained on the same inputs is kept; one interrupted while training on them goes on from its last
checkpoint; anything else in the directory is removed and trained afresh. Two stamps in the model directory say
which: what the finished model was trained from, and, while it trains, what its checkpoints come from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from llm_embedder.io import atomic_write

TRAINED_STAMP = "pipeline_inputs.json"  # in a model dir: what the finished model was trained from
STARTED_STAMP = "training_inputs.json"  # in a model dir while it trains: what its checkpoints come from


def read_stamp(path: Path) -> Any:
    """A stamp's JSON, or None where there is none (or only a torn one, from a kill while it was written)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def train_once(out: Path, inputs: dict[str, Any], train_fn: Callable[[bool], Any], console: Console) -> bool:
    """Call ``train_fn(resume)`` to train into ``out`` unless it holds a model trained on ``inputs``; True if called.

    ``inputs`` (JSON) is everything the model depends on. ``resume`` is True when ``out`` holds checkpoints of an
    interrupted run on the same inputs (a complete one: ``latest_checkpoint`` skips a save cut off by a kill, and
    the trainer says so when it resumes). If ``train_fn`` raises, ``out`` keeps its checkpoints for the next try;
    once it returns, they are removed (the final model is saved; they are about three times its size).
    """
    from llm_embedder.train.trainer import latest_checkpoint

    trained, started = out / TRAINED_STAMP, out / STARTED_STAMP
    if read_stamp(trained) == inputs:
        console.print(f"{out}: already trained on these inputs", soft_wrap=True)
        return False
    checkpoint = latest_checkpoint(out, say=False) if read_stamp(started) == inputs else None
    if checkpoint is not None:
        console.print(f"{out}: resuming from {Path(checkpoint).name}", soft_wrap=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(started) as handle:
        json.dump(inputs, handle)
    train_fn(checkpoint is not None)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    with atomic_write(trained) as handle:
        json.dump(inputs, handle)
    started.unlink(missing_ok=True)
    return True
