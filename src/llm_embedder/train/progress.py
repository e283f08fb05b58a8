"""Training progress where the output is not a terminal: a plain line now and then instead of tqdm's bar.

In a log (``make demo > demo.log 2>&1``, ``nohup``, CI) the HF trainer's tqdm bar is one line that grows by a
``\\r``-update, and a logged loss dict, per step. There the trainer runs without tqdm, and this callback writes
one line every ``log_every`` seconds and one at the end, e.g.
``training models/unified: step 40/88 (45%), 2:19, ~2:45 left, loss 1.12``, the loss being the mean of the
losses logged since the last line. A terminal keeps tqdm's bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from transformers import TrainerCallback

from llm_embedder.progress import LOG_EVERY, format_duration


def plain_progress_wanted(stream: TextIO | None = None) -> bool:
    """Whether training should log plain lines: where tqdm's stream (stderr) is not a terminal, and not in a
    notebook (whose stderr is no terminal either, but which gets HF's notebook progress widget)."""
    from transformers.utils.import_utils import is_in_notebook

    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return not (isatty is not None and isatty()) and not is_in_notebook()


class PlainTrainingProgress(TrainerCallback):
    """Print ``{label}: step N/M (pct), elapsed, ~remaining left, loss L`` every ``log_every`` seconds and at
    the end, from the main process only. After a resume the remaining time counts only this run's steps."""

    def __init__(self, label: str, log_every: float = LOG_EVERY, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.log_every, self.stream, self.clock = label, log_every, stream, clock
        self.started = self.last_line = 0.0
        self.first_step = 0
        self.losses: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = self.last_line = self.clock()
        self.first_step = state.global_step  # > 0 after a resume
        self.losses = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.clock() - self.last_line >= self.log_every and state.global_step < state.max_steps:
            self.print_line(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.print_line(state)

    def status_line(self, state: Any) -> str:
        done, total = state.global_step, state.max_steps
        elapsed = self.clock() - self.started
        line = f"{self.label}: step {done}/{total} ({100 * done / max(total, 1):.0f}%), {format_duration(elapsed)}"
        run_steps = done - self.first_step
        if done < total and run_steps > 0:
            line += f", ~{format_duration(elapsed * (total - done) / run_steps)} left"
        if self.losses:
            line += f", loss {sum(self.losses) / len(self.losses):.4g}"
        return line

    def print_line(self, state: Any) -> None:
        if state.is_world_process_zero:
            print(self.status_line(state), file=self.stream or sys.stderr, flush=True)
        self.last_line = self.clock()
        self.losses = []
