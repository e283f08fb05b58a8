"""Progress bars for long jobs: a live bar in a terminal, and a plain line now and then where there is none.

Bars go to stderr: stdout is left to a command's output (evaluate's table, search --json, encode's vectors).
Rich draws nothing while its output is not a terminal (``make demo > demo.log 2>&1``, ``nohup``, a CI log) and prints
the bars once at the end, so a 10-minute scoring run would show no sign of life there. ``LoggedProgress`` is a
rich ``Progress`` that, in that case, prints each visible task's state as one line every ``log_every`` seconds
and when it finishes, instead of the bars.
"""

from __future__ import annotations

import time
from typing import Any

from rich.progress import Progress, Task, TaskID

LOG_EVERY = 30.0  # seconds between plain progress lines where the output is not a terminal


def format_duration(seconds: float) -> str:
    """``M:SS``, or ``H:MM:SS`` from an hour on."""
    seconds = int(round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class LoggedProgress(Progress):
    """``rich.progress.Progress`` that also writes plain progress lines when its console is not a terminal. Its
    console is stderr's unless one is given (rich's default is stdout's, which a command's output shares).

    ``log_start``: a task's first line comes as it starts (``encoding qa keys: 0/200 (0%), 0:00``), not
    ``log_every`` later: a short job done in one step (a small corpus in one batch) would otherwise say nothing
    until it ends."""

    def __init__(self, *columns: Any, log_every: float = LOG_EVERY, log_start: bool = False, **kwargs: Any) -> None:
        if kwargs.get("console") is None:  # stderr, as tqdm and training's lines: stdout is the command's output
            from rich.console import Console

            kwargs["console"] = Console(stderr=True)
        super().__init__(*columns, **kwargs)
        self.log_every = log_every
        self.log_start = log_start
        self._last_logged: dict[TaskID, float] = {}
        # decided once: where the output is not a terminal the lines stand in for the bars
        self.plain_lines = not (self.disable or self.console.is_terminal or self.console.is_jupyter)
        if self.plain_lines:
            self.live.transient = True  # rich would print every bar once more at the end; the lines said it

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        task_id = super().add_task(*args, **kwargs)
        if self.log_start:
            self._log(task_id)
        return task_id

    def start_task(self, task_id: TaskID) -> None:
        super().start_task(task_id)
        if self.log_start:
            self._log(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    @staticmethod
    def status_line(task: Task) -> str:
        """``description: done/total (pct), elapsed, ~remaining left`` (without a total: done so far)."""
        done, elapsed = f"{task.completed:.0f}", format_duration(task.elapsed or 0)
        if task.total is None:
            return f"{task.description}: {done} done, {elapsed}"
        line = f"{task.description}: {done}/{task.total:.0f} ({task.percentage:.0f}%), {elapsed}"
        if not task.finished and task.completed and task.elapsed:
            remaining = task.elapsed * (task.total - task.completed) / task.completed
            line += f", ~{format_duration(remaining)} left"
        return line

    def _log(self, task_id: TaskID) -> None:
        if not self.plain_lines:
            return
        task = next(task for task in self.tasks if task.id == task_id)
        if not task.visible or task.start_time is None:
            return
        now, done = time.monotonic(), float("inf")
        last = self._last_logged.get(task_id)
        if last is None or (last == done and not task.finished):  # (re)started: the first line comes later,
            self._last_logged[task_id] = last = now
            if self.log_start and not task.finished:  # or now where the job asks for it
                self._print(task)
                return
        if task.finished:
            if last != done:
                self._print(task)
                self._last_logged[task_id] = done
        elif now - last >= self.log_every:
            self._print(task)
            self._last_logged[task_id] = now

    def _print(self, task: Task) -> None:
        self.console.print(self.status_line(task), highlight=False, markup=False, soft_wrap=True)


def count_progress(enabled: bool = True, console: Any = None, log_start: bool = False) -> LoggedProgress:
    """The bar of a job that counts items (description, bar, done/total, time left), or plain lines in a log;
    ``console``: where (stderr's by default, as ``LoggedProgress``); ``log_start``: a log's first line as each task
    starts."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return LoggedProgress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        disable=not enabled, console=console, log_start=log_start,
    )
