"""train_once: skip a model trained on the same inputs, resume an interrupted one, start afresh otherwise."""

import json
from pathlib import Path

import pytest
from rich.console import Console

from llm_embedder.train.once import STARTED_STAMP, TRAINED_STAMP, train_once
from llm_embedder.train.trainer import CHECKPOINT_DIR, CHECKPOINT_FILES, TRAINER_STATE


def write_checkpoint(folder: Path, step: int, complete: bool = True) -> None:
    """A checkpoint folder as the HF trainer leaves it: whole, or cut off after the model (no optimizer, state)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors").write_text("weights")
    if complete:
        for name in CHECKPOINT_FILES:
            (folder / name).write_text("state")
        (folder / TRAINER_STATE).write_text(json.dumps({"global_step": step}))


class FakeTraining:
    """Records each call's ``resume``; writes a checkpoint, then fails if told to (an interrupted run)."""

    def __init__(self, out, fail=False):
        self.out, self.fail, self.calls = out, fail, []

    def __call__(self, resume: bool) -> None:
        self.calls.append(resume)
        write_checkpoint(self.out / CHECKPOINT_DIR / "checkpoint-20", 20)
        if self.fail:
            raise KeyboardInterrupt
        (self.out / "model.safetensors").write_text("weights")


def test_trains_once_per_inputs_and_resumes_an_interrupted_run(tmp_path):
    out, console = tmp_path / "model", Console(record=True, width=500)
    interrupted = FakeTraining(out, fail=True)
    with pytest.raises(KeyboardInterrupt):
        train_once(out, {"lr": 1e-4}, interrupted, console)
    assert interrupted.calls == [False]
    assert (out / STARTED_STAMP).exists() and not (out / TRAINED_STAMP).exists()

    finished = FakeTraining(out)
    assert train_once(out, {"lr": 1e-4}, finished, console)
    assert finished.calls == [True]  # went on from the checkpoint
    assert "resuming from checkpoint-20" in console.export_text()
    assert not (out / CHECKPOINT_DIR).exists() and not (out / STARTED_STAMP).exists()

    again = FakeTraining(out)
    assert not train_once(out, {"lr": 1e-4}, again, console)
    assert again.calls == [] and "already trained on these inputs" in console.export_text()


def test_other_inputs_or_a_torn_stamp_train_afresh(tmp_path):
    out, console = tmp_path / "model", Console(record=True, width=500)
    train_once(out, {"lr": 1e-4}, FakeTraining(out), console)
    (out / "stray.txt").write_text("from the old model")

    other = FakeTraining(out)
    assert train_once(out, {"lr": 5e-5}, other, console)
    assert other.calls == [False] and not (out / "stray.txt").exists()

    (out / TRAINED_STAMP).write_text('{"lr": 5e-')  # a kill while the stamp was written
    torn = FakeTraining(out)
    assert train_once(out, {"lr": 5e-5}, torn, console)
    assert torn.calls == [False]


def test_checkpoints_of_other_inputs_are_not_resumed(tmp_path):
    out, console = tmp_path / "model", Console(record=True, width=500)
    with pytest.raises(KeyboardInterrupt):
        train_once(out, {"lr": 1e-4}, FakeTraining(out, fail=True), console)
    other = FakeTraining(out)
    assert train_once(out, {"lr": 5e-5}, other, console)
    assert other.calls == [False]


def test_a_checkpoint_cut_off_while_saved_is_not_resumed_from(tmp_path):
    """An interrupted run goes on from its newest complete checkpoint; with none complete, it starts afresh."""
    out, console = tmp_path / "model", Console(record=True, width=500)
    with pytest.raises(KeyboardInterrupt):
        train_once(out, {"lr": 1e-4}, FakeTraining(out, fail=True), console)
    write_checkpoint(out / CHECKPOINT_DIR / "checkpoint-30", 30, complete=False)  # killed while saving step 30
    resumed = FakeTraining(out)
    assert train_once(out, {"lr": 1e-4}, resumed, console)
    assert resumed.calls == [True] and "resuming from checkpoint-20" in console.export_text()

    out = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        train_once(out, {"lr": 1e-4}, FakeTraining(out, fail=True), console)
    (out / CHECKPOINT_DIR / "checkpoint-20" / TRAINER_STATE).write_text('{"global_st')  # torn: cut off too
    afresh = FakeTraining(out)
    assert train_once(out, {"lr": 1e-4}, afresh, console)
    assert afresh.calls == [False]
