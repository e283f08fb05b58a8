"""``train --resume`` edge cases: a checkpoint cut off mid-save, other data or settings, a finished run; an unknown
task in --loss-override."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import optimizer_state, run, run_cut_at
from train_fixtures import trainers_changed, write_task_file
from transformers import TrainerCallback
from typer.testing import CliRunner

from llm_embedder.train import trainer as trainer_module
from llm_embedder.train.card import read_step_log
from llm_embedder.train.config import TrainConfig, read_config_file


class Killed(Exception):
    """Stands for the process being killed."""


def files_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` (relative path -> bytes, mtime): to see that nothing was written."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def losses(out: Path) -> list[float]:
    return [s["loss"] for s in read_step_log(out / "logs" / "steps.rank0.jsonl")]


def killed_while_saving(step: int, monkeypatch, out: Path, data: Path, base: Path, **extra) -> None:
    """``run``, killed while it saved the checkpoint of ``step``: its model is written, the rest is not."""
    def cut_save(built) -> None:
        save = built._save_optimizer_and_scheduler

        def cut(output_dir):
            if built.state.global_step == step:
                raise Killed
            save(output_dir)

        built._save_optimizer_and_scheduler = cut

    with trainers_changed(monkeypatch, cut_save), pytest.raises(Killed):
        run(out, data, base, **extra)


def test_resume_skips_a_checkpoint_cut_off_while_saved(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                       monkeypatch, caplog) -> None:
    """The newest checkpoint, cut off mid-save (no optimizer, scheduler or trainer state), is skipped with a line
    saying so; the run goes on from the one before, saves that step's checkpoint again (complete), rotates, and
    ends as the uninterrupted run does."""
    settings = dict(max_steps=6, save_steps=2, save_total_limit=2)
    full = run(tmp_path / "full", data_dir, tiny_embedder_dir, **settings)
    part = tmp_path / "part"
    killed_while_saving(4, monkeypatch, part, data_dir, tiny_embedder_dir, **settings)
    cut = part / "checkpoints" / "checkpoint-4"
    assert cut.is_dir() and not (cut / "trainer_state.json").exists()
    assert trainer_module.latest_checkpoint(part).endswith("checkpoint-2")
    with pytest.raises(ValueError, match="--resume"):  # a cut-off checkpoint still counts as one
        run(part, data_dir, tiny_embedder_dir, **settings)

    caplog.set_level(logging.WARNING, logger="llm_embedder.train.trainer")
    caplog.clear()
    run(part, data_dir, tiny_embedder_dir, resume=True, **settings)
    skipped = [r.getMessage() for r in caplog.records if "checkpoint-4" in r.getMessage()]
    assert len(skipped) == 1 and "incomplete" in skipped[0] and "checkpoint-2" in skipped[0], skipped
    assert checkpoint_names(part) == ["checkpoint-4", "checkpoint-6"]  # saved again, then rotated
    for step in (4, 6):
        folder = part / "checkpoints" / f"checkpoint-{step}"
        assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == step
        assert (folder / "optimizer.pt").is_file() and (folder / "scheduler.pt").is_file()
    assert losses(part) == pytest.approx(losses(full), rel=1e-4, abs=1e-6)
    full_opt, part_opt = (optimizer_state(p / "checkpoints" / "checkpoint-6") for p in (full, part))
    for key in full_opt:
        torch.testing.assert_close(full_opt[key]["exp_avg_sq"], part_opt[key]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    assert "Resumed from `" in (part / "TRAINING_CARD.md").read_text()


def test_resume_refuses_other_data_or_settings(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                               monkeypatch) -> None:
    """Other data (by content) or hyper-parameters than the run's are refused before anything is written, also
    in a run folder of an earlier version (what it recorded is compared); progress, checkpoint and device options
    may change."""
    part = run_cut_at(8, monkeypatch, tmp_path / "part", data_dir, tiny_embedder_dir)
    before = files_state(part)
    tool = data_dir / "tool" / "train.jsonl"
    with pytest.raises(ValueError) as err:
        run(part, tool, tiny_embedder_dir, resume=True, lr=0.5)
    message = str(err.value)
    assert "\n" not in message and str(part) in message and "data" in message and "lr 0.001 (now 0.5)" in message
    assert "same arguments" in message and "--out" in message
    assert "max_steps" not in message and "batch_size" not in message
    with pytest.raises(ValueError, match=r"temperature 0\.01 \(now 0\.05\)"):
        run(part, data_dir, tiny_embedder_dir, resume=True, temperature=0.05)
    with pytest.raises(ValueError, match="loss_override"):
        run(part, data_dir, tiny_embedder_dir, resume=True, loss_override={"qa": "kl_distill"})
    qa = data_dir / "qa" / "train.jsonl"
    qa_text = qa.read_bytes()
    write_task_file(qa, "qa", 9, scores=True)  # same path, other content
    with pytest.raises(ValueError, match="data.*content") as err:
        run(part, data_dir, tiny_embedder_dir, resume=True)
    assert "qa" in str(err.value)
    qa.write_bytes(qa_text)
    assert files_state(part) == before  # nothing written

    # a run folder of an earlier version records no settings: its checkpoint's max_steps is still compared
    (part / "run_inputs.json").unlink()
    with pytest.raises(ValueError, match=r"max_steps 9 \(now 12\)"):
        run(part, data_dir, tiny_embedder_dir, resume=True, max_steps=12)
    # options that do not change what is computed may change
    run(part, data_dir, tiny_embedder_dir, resume=True, logging_steps=3, save_steps=4, save_total_limit=5,
        device="cpu")
    assert [s["step"] for s in read_step_log(part / "logs" / "steps.rank0.jsonl")] == list(range(1, 10))
    assert json.loads((part / "run_inputs.json").read_text())["settings"]["lr"] == 1e-3

    # the finished run: refused as well, its config and card untouched (tester's case: one task, lr 0.5)
    finished = files_state(part)
    result = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "train", "--data", str(tool), "--out", str(part), "--base",
         str(tiny_embedder_dir), "--max-steps", "9", "--batch-size", "4", "--group-size", "3", "--lr", "0.5",
         "--save-steps", "7", "--query-max-length", "32", "--key-max-length", "32", "--resume"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "1000"},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "lr 0.001 (now 0.5)" in result.stderr and "data" in result.stderr
    assert files_state(part) == finished
    # a finished run of an earlier version: its train_config.json is compared
    (part / "run_inputs.json").unlink()
    with pytest.raises(ValueError, match=r"lr 0\.001 \(now 0\.5\)"):
        run(part, data_dir, tiny_embedder_dir, resume=True, lr=0.5)


def test_resume_of_a_finished_run_trains_nothing(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                 monkeypatch, caplog) -> None:
    """A finished run (final model saved, last checkpoint at max_steps) is reported complete: no step is trained
    and nothing is written. One cut off after its last checkpoint, before its final model was saved, saves the
    model from that checkpoint, training no further step."""
    settings = dict(max_steps=5, save_steps=5)
    out = run(tmp_path / "done", data_dir, tiny_embedder_dir, **settings)
    before = files_state(out)
    caplog.set_level(logging.WARNING, logger="llm_embedder.train.trainer")
    assert run(out, data_dir, tiny_embedder_dir, resume=True, **settings) == out
    assert files_state(out) == before
    assert any("already complete" in r.getMessage() for r in caplog.records)

    original = trainer_module.save_outputs

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(trainer_module, "save_outputs", killed)
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        run(cut, data_dir, tiny_embedder_dir, **settings)
    monkeypatch.setattr(trainer_module, "save_outputs", original)
    assert not (cut / "train_config.json").exists()
    run(cut, data_dir, tiny_embedder_dir, resume=True, **settings)
    assert [s["step"] for s in read_step_log(cut / "logs" / "steps.rank0.jsonl")] == [1, 2, 3, 4, 5]
    assert checkpoint_names(cut) == ["checkpoint-5"]
    assert "Steps: 5 (max 5)" in (cut / "TRAINING_CARD.md").read_text()
    from safetensors.torch import load_file

    done, saved = (load_file(str(p / "model.safetensors")) for p in (out, cut))
    for name, value in done.items():
        torch.testing.assert_close(saved[name], value, rtol=1e-5, atol=1e-7)


def test_unknown_loss_override_task_is_refused(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path) -> None:
    """A task --loss-override names that no registry holds is refused as an unknown --plain-task is, from the
    CLI and from a YAML file, before anything is read or written."""
    from llm_embedder.cli.app import app

    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="^loss_override: unknown task 'nope'; known tasks: qa, "):
        run(out, data_dir, tiny_embedder_dir, loss_override={"nope": "kl_distill"})
    yaml = tmp_path / "train.yaml"
    yaml.write_text("loss_override: {nope: kl_distill}\n")
    config = TrainConfig(**{**read_config_file(yaml), "data": [str(data_dir)], "out": str(out),
                            "base": str(tiny_embedder_dir)})
    with pytest.raises(ValueError, match="^loss_override: unknown task 'nope'"):
        trainer_module.train(config)
    result = CliRunner().invoke(app, ["train", "--data", str(data_dir), "--out", str(out), "--base",
                                      str(tiny_embedder_dir), "--loss-override", "nope=kl_distill"])
    assert isinstance(result.exception, ValueError)
    assert str(result.exception).startswith("--loss-override: unknown task 'nope'")
    assert not out.exists()


class KillAt(TrainerCallback):
    """Stands for a kill after ``step`` (before its checkpoint, if any, is saved)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def killed_after(step: int, monkeypatch, out: Path, data: Path, base: Path, **extra) -> None:
    """``run``, killed after ``step``: what it logged and saved until then stays."""
    with trainers_changed(monkeypatch, lambda built: built.add_callback(KillAt(step))), pytest.raises(Killed):
        run(out, data, base, **extra)


def logged_steps(out: Path) -> list[int]:
    """Every step record in rank 0's log, as written (repeats kept)."""
    lines = (out / "logs" / "steps.rank0.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_step_logs_hold_only_the_steps_of_this_run(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                   monkeypatch) -> None:
    """A run from scratch in a folder whose earlier run was killed before any checkpoint starts its step log empty:
    its card and curves count its own steps only. A resume from checkpoint N drops what the killed run logged past
    N (those steps are trained again), and a line torn by the kill."""
    out = tmp_path / "out"
    killed_after(5, monkeypatch, out, data_dir, tiny_embedder_dir)  # save_steps 7: no checkpoint yet
    assert logged_steps(out) == [1, 2, 3, 4, 5]
    run(out, data_dir, tiny_embedder_dir, max_steps=3)
    assert logged_steps(out) == [1, 2, 3]
    card = (out / "TRAINING_CARD.md").read_text()
    assert sum(int(line.split(" | ")[5]) for line in card.splitlines() if line.startswith("| qa | ")
               or line.startswith("| tool | ") or line.startswith("| chat | ")) == 3

    part = tmp_path / "part"
    killed_after(8, monkeypatch, part, data_dir, tiny_embedder_dir)  # after the step-7 checkpoint
    with (part / "logs" / "steps.rank0.jsonl").open("a") as handle:
        handle.write('{"step": 9, "ra')  # torn by the kill
    run(part, data_dir, tiny_embedder_dir, resume=True)
    assert logged_steps(part) == list(range(1, 10))


def test_a_resume_checkpoints_and_logs_at_its_own_intervals(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                            monkeypatch, caplog) -> None:
    """--save-steps and logging_steps given anew on --resume take effect (the HF loop kept the checkpoint's), with a
    line saying so."""
    part = run_cut_at(4, monkeypatch, tmp_path / "part", data_dir, tiny_embedder_dir, save_steps=2,
                      save_total_limit=10)
    assert checkpoint_names(part) == ["checkpoint-2"]
    caplog.set_level(logging.WARNING, logger="llm_embedder.train.trainer")
    run(part, data_dir, tiny_embedder_dir, resume=True, save_steps=3, logging_steps=2, save_total_limit=10)
    assert checkpoint_names(part) == ["checkpoint-2", "checkpoint-3", "checkpoint-6", "checkpoint-9"]
    state = json.loads((part / "checkpoints" / "checkpoint-9" / "trainer_state.json").read_text())
    assert (state["save_steps"], state["logging_steps"]) == (3, 2)
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 4, 6, 8]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--resume: save_steps")]
    assert said == ["--resume: save_steps 3 (the checkpoint's 2) from step 2"]


class Reached(Exception):
    """Stands for training starting: the resume was accepted."""


def test_resume_knows_the_base_by_its_folder_and_weights(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                         monkeypatch) -> None:
    """The base is compared by its weight files' version, not as typed: the same folder given as a relative path
    with a slash, an absolute path or a copy elsewhere (times kept) resumes; the folder with its weights changed
    is refused, in one line. A run recorded by an earlier version (no version) is compared by the folder named."""
    base = tmp_path / "models" / "st"
    shutil.copytree(tiny_embedder_dir, base)
    part = run_cut_at(4, monkeypatch, tmp_path / "part", data_dir, base, save_steps=2)

    def reached(config, files):
        raise Reached

    monkeypatch.setattr(trainer_module, "build_trainer", reached)
    monkeypatch.chdir(tmp_path)
    copy = shutil.copytree(base, tmp_path / "elsewhere" / "st")
    for given in ("models/st/", str(base.resolve()), copy):
        with pytest.raises(Reached):
            run(part, data_dir, given, resume=True, save_steps=2)
    stamp = part / "run_inputs.json"
    recorded = json.loads(stamp.read_text())
    earlier = {**recorded, "settings": {k: v for k, v in recorded["settings"].items() if k != "base_version"}}
    stamp.write_text(json.dumps(earlier))
    with pytest.raises(Reached):
        run(part, data_dir, "models/st/", resume=True, save_steps=2)
    with pytest.raises(ValueError, match=r"base .*st \(now .*elsewhere/st\)"):
        run(part, data_dir, copy, resume=True, save_steps=2)

    stamp.write_text(json.dumps(recorded))
    weights = base / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match=r"base: the weights of models/st/ changed since the run started") as err:
        run(part, data_dir, "models/st/", resume=True, save_steps=2)
    assert "\n" not in str(err.value)
    # a bundled alias is its package's model: reinstalled (new times), it is the same base
    versions = ({"base": "minilm", "base_version": [["model.safetensors", 1, t]]} for t in (1, 2))
    assert trainer_module._base_differs(*versions) is None


def test_an_unreadable_checkpoint_is_named_in_one_line(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path,
                                                       monkeypatch) -> None:
    """The newest checkpoint's optimizer.pt truncated on disk: --resume says, in one line, which checkpoint cannot be
    read and to remove it (torch's zip-archive error came with a long traceback); removed, the run resumes from the
    one before."""
    settings = dict(save_steps=2, save_total_limit=5)
    part = run_cut_at(5, monkeypatch, tmp_path / "part", data_dir, tiny_embedder_dir, **settings)
    newest = part / "checkpoints" / "checkpoint-4"
    optimizer = newest / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    with pytest.raises(trainer_module.CheckpointUnreadableError) as err:
        run(part, data_dir, tiny_embedder_dir, resume=True, **settings)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message and len(message) < 300 + len(str(newest))
    assert message.startswith(f"--resume: cannot read the optimizer or scheduler state of {newest} (")
    assert message.endswith("remove that checkpoint folder to resume from the one before it")
    shutil.rmtree(newest)
    run(part, data_dir, tiny_embedder_dir, resume=True, **settings)
    assert "Resumed from `" in (part / "TRAINING_CARD.md").read_text()
    assert "checkpoint-2" in (part / "TRAINING_CARD.md").read_text()


def test_the_cli_names_the_trained_model_only_when_it_wrote_one(tmp_path: Path, data_dir: Path,
                                                                tiny_embedder_dir: Path) -> None:
    """'trained model: OUT' follows a run that saved the model, not a --resume of a finished run (which says that
    nothing is trained or written)."""
    from llm_embedder.cli.app import app

    out = tmp_path / "done"
    args = ["train", "--data", str(data_dir), "--out", str(out), "--base", str(tiny_embedder_dir), "--max-steps",
            "3", "--batch-size", "4", "--group-size", "3", "--save-steps", "3", "--query-max-length", "32",
            "--key-max-length", "32"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert f"trained model: {out}" in first.output
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert "trained model" not in again.output
