"""Plain training progress lines where the output is not a terminal (the callback, and a real training run)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

from llm_embedder.train import trainer as trainer_module
from llm_embedder.train.config import TrainConfig
from llm_embedder.train.progress import PlainTrainingProgress, plain_progress_wanted


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(callback: PlainTrainingProgress, clock: Clock, steps: range, max_steps: int, main: bool = True,
             seconds_per_step: float = 10.0) -> None:
    """Drive the callback as the HF loop does: on_step_end, then on_log with that step's loss."""
    state = SimpleNamespace(global_step=steps.start, max_steps=max_steps, is_world_process_zero=main)
    callback.on_train_begin(None, state, None)
    for step in steps:
        clock.now += seconds_per_step
        state.global_step = step + 1
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"loss": float(step + 1), "grad_norm": 1.0})
    callback.on_log(None, state, None, logs={"train_loss": 99.0})  # the end-of-run summary has no "loss"
    callback.on_train_end(None, state, None)


def test_a_line_every_log_every_seconds_and_one_at_the_end():
    clock, out = Clock(), io.StringIO()
    simulate(PlainTrainingProgress("training models/unified", log_every=30, stream=out, clock=clock), clock,
             range(0, 8), max_steps=8)
    assert out.getvalue().splitlines() == [
        # 30 s in (step 3); the losses of steps 1 and 2 were logged by then
        "training models/unified: step 3/8 (38%), 0:30, ~0:50 left, loss 1.5",
        "training models/unified: step 6/8 (75%), 1:00, ~0:20 left, loss 4",
        "training models/unified: step 8/8 (100%), 1:20, loss 7",
    ]


def test_after_a_resume_the_time_left_counts_only_this_runs_steps():
    clock, out = Clock(), io.StringIO()
    simulate(PlainTrainingProgress("training x", log_every=20, stream=out, clock=clock), clock,
             range(6, 10), max_steps=10)
    first = out.getvalue().splitlines()[0]
    assert first.startswith("training x: step 8/10 (80%), 0:20, ~0:20 left"), first


def test_only_the_main_process_prints():
    clock, out = Clock(), io.StringIO()
    simulate(PlainTrainingProgress("training x", log_every=0, stream=out, clock=clock), clock,
             range(0, 4), max_steps=4, main=False)
    assert out.getvalue() == ""


def test_plain_lines_are_wanted_where_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("transformers.utils.import_utils.is_in_notebook", lambda: False)
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert plain_progress_wanted(io.StringIO())
    assert plain_progress_wanted(object())  # a stream without isatty is not a terminal
    assert not plain_progress_wanted(Terminal())


def test_a_notebook_keeps_hfs_notebook_progress(monkeypatch):
    monkeypatch.setattr("transformers.utils.import_utils.is_in_notebook", lambda: True)
    assert not plain_progress_wanted(io.StringIO())


def test_training_into_a_log_prints_lines_not_tqdm_bars(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                         capfd) -> None:
    # pytest's captured stderr is not a terminal, like a log file
    trainer_module.train(TrainConfig(data=[str(data_dir)], out=str(tmp_path / "models" / "unified"),
                                     base=str(tiny_embedder_dir), max_steps=4, batch_size=4, group_size=3, lr=1e-3,
                                     save_steps=100, logging_steps=1, query_max_length=32, key_max_length=32))
    err = capfd.readouterr().err
    assert re.search(r"^training models/unified: step 4/4 \(100%\), \d+:\d\d, loss \d", err, re.M), err
    assert "Computing widget examples" not in err, err  # sentence-transformers' model card bar
    assert not re.search(r"\d/4 \[", err), err  # no tqdm bar over the 4 steps (other libraries' bars may show)
    assert "{'loss'" not in err and "train_runtime" not in err, err  # nor HF's printed log dicts
