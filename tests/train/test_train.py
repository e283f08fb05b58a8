"""End-to-end training on tiny fixtures (one process): outputs, resume with optimizer state, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from train_fixtures import trainers_changed
from transformers import TrainerCallback

from llm_embedder.train import trainer as trainer_module
from llm_embedder.train.card import read_step_log
from llm_embedder.train.config import TrainConfig, read_config_file

# 3 datasets x 8 examples / batch 4 = 6 steps per epoch: 9 steps cross into the second epoch
SMALL = dict(max_steps=9, batch_size=4, group_size=3, lr=1e-3, save_steps=7, logging_steps=1,
             query_max_length=32, key_max_length=32)


class StopAt(TrainerCallback):
    """Simulate a run killed after a checkpoint: stop at ``step`` without saving it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
            control.should_save = False
        return control


def run(out: Path, data: Path, base: Path, **extra) -> Path:
    return trainer_module.train(TrainConfig(data=[str(data)], out=str(out), base=str(base), **{**SMALL, **extra}))


def run_cut_at(step: int, monkeypatch, out: Path, data: Path, base: Path, **extra) -> Path:
    """``run``, killed after ``step`` as if interrupted (the last checkpoint before it is kept)."""
    with trainers_changed(monkeypatch, lambda built: built.add_callback(StopAt(step))):
        return run(out, data, base, **extra)


def optimizer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]


def test_train_outputs_and_resume(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path, monkeypatch) -> None:
    full = run(tmp_path / "full", data_dir, tiny_embedder_dir)

    # outputs: a sentence-transformers dir with every task's prompts, the card, the curves, checkpoints
    st_config = json.loads((full / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["qa.query"] == "Represent this query for retrieving relevant documents: "
    assert st_config["prompts"]["chat.key"] == "Embed this historical dialogue for retrieval: "
    # sentence-transformers' card gives the length the model was trained at (it gave the base's 256)
    assert "**Maximum Sequence Length:** 32 tokens" in (full / "README.md").read_text()
    card = (full / "TRAINING_CARD.md").read_text()
    assert "stable_distill" in card and "kl_distill" in card and "contrastive" in card
    assert "mixed precision off (fp32)" in card and "fp16 True" not in card  # CPU: fp16 (the default) is off
    assert (full / "loss_curves.png").stat().st_size > 1000
    assert (full / "checkpoints" / "checkpoint-9").is_dir()
    from llm_embedder.embedder import Embedder

    vectors = Embedder(full, device="cpu").encode_queries(["a question"], "qa")
    assert vectors.shape == (1, 32)
    steps = read_step_log(full / "logs" / "steps.rank0.jsonl")
    assert [s["step"] for s in steps] == list(range(1, 10)) and all(s["loss"] > 0 for s in steps)

    # interrupted after the step-7 checkpoint, in epoch 2 (step 8 ran but was not saved), then resumed
    part = run_cut_at(8, monkeypatch, tmp_path / "part", data_dir, tiny_embedder_dir)
    assert trainer_module.latest_checkpoint(part).endswith("checkpoint-7")
    with pytest.raises(ValueError, match="--resume"):
        run(part, data_dir, tiny_embedder_dir)
    run(part, data_dir, tiny_embedder_dir, resume=True)

    state = json.loads((part / "checkpoints" / "checkpoint-9" / "trainer_state.json").read_text())
    assert state["global_step"] == 9
    resumed = read_step_log(part / "logs" / "steps.rank0.jsonl")
    assert [s["task"] for s in resumed] == [s["task"] for s in steps]
    for a, b in zip(resumed, steps, strict=True):  # same batches, same weights, same optimizer moments
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    full_opt, part_opt = (optimizer_state(p / "checkpoints" / "checkpoint-9") for p in (full, part))
    assert full_opt.keys() == part_opt.keys()
    for key in full_opt:
        assert int(full_opt[key]["step"]) == int(part_opt[key]["step"]) == 9
        torch.testing.assert_close(full_opt[key]["exp_avg_sq"], part_opt[key]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    assert "Resumed from" in (part / "TRAINING_CARD.md").read_text()


def test_training_lowers_the_loss(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    """One contrastive dataset of 8 records, 2 batches per epoch, 12 steps: the loss of the last epochs is
    clearly below that of the first (< 0.8x) (the model learns the training pairs)."""
    from train_fixtures import write_task_file

    data = write_task_file(tmp_path / "tool" / "train.jsonl", "tool", 8, scores=False)
    out = run(tmp_path / "learn", data, tiny_embedder_dir, max_steps=12, batch_size=4, save_steps=100, lr=3e-3,
              warmup_ratio=0.0)
    losses = [s["loss"] for s in read_step_log(out / "logs" / "steps.rank0.jsonl")]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses


def test_a_diverged_run_stops_naming_the_step_and_saves_no_model(tmp_path: Path, data_dir: Path,
                                                                 tiny_embedder_dir: Path) -> None:
    """At lr 1e6 the loss becomes NaN within a few steps (HF's progress shows only finite losses): training stops
    there with one line naming the step, a user error (exit 2 from the CLI), and no final model is written."""
    out = tmp_path / "nan"
    with pytest.raises(trainer_module.TrainingDivergedError,
                       match=r"^training diverged: the loss became nan at step \d+ \((qa|tool|chat) batch\)") as err:
        run(out, data_dir, tiny_embedder_dir, lr=1e6, warmup_ratio=0.0)
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    logged = read_step_log(out / "logs" / "steps.rank0.jsonl")
    assert logged[-1]["loss"] != logged[-1]["loss"] and all(s["loss"] == s["loss"] for s in logged[:-1])
    assert f"at step {logged[-1]['step']} " in str(err.value)
    assert not (out / "model.safetensors").exists() and not (out / "train_config.json").exists()
    assert not (out / "TRAINING_CARD.md").exists()


def test_bad_input_fails_before_training(tmp_path: Path, data_dir: Path, tiny_embedder_dir: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "task": "qa", "pos": ["p"], "neg": ["n"], "query_id": 0}) + "\n")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "train", "--data", str(data_dir), "--data", str(bad),
         "--out", str(out), "--base", str(tiny_embedder_dir), "--max-steps", "1", "--batch-size", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert f"{bad}:1:teacher_scores" in result.stderr.replace("\n", "")
    assert not out.exists()  # nothing started


def test_records_all_dropped_by_a_filter_are_named_not_the_batch_size(tmp_path: Path, tiny_embedder_dir: Path,
                                                                       caplog) -> None:
    """Every lrlm record below the teacher-score margin is dropped: the error says so (a smaller --batch-size would
    not help), naming the file and the filter, before anything is written."""
    from train_fixtures import write_task_file

    data = tmp_path / "lrlm.jsonl"
    rows = [{"query_id": i, "query": f"chunk {i}", "task": "lrlm", "pos": [], "neg": ["a", "b", "c"],
             "teacher_scores": [0.0, 0.0, 0.0]} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with pytest.raises(ValueError) as err:
        run(out, data, tiny_embedder_dir)
    message = str(err.value)
    assert message == (f"no training examples: every record was dropped: {data}: 8 of 8 records dropped (8 by the "
                       "lrlm task's teacher_scores_margin 0.1 filter)")
    assert "--batch-size" not in message and not out.exists()
    # some examples left, fewer than a batch: the batch size is named, and the drops in the warning
    write_task_file(tmp_path / "qa.jsonl", "qa", 2, scores=True)
    with pytest.raises(ValueError, match="lower --batch-size"):
        trainer_module.train(TrainConfig(data=[str(data), str(tmp_path / "qa.jsonl")], out=str(out),
                                         base=str(tiny_embedder_dir), **SMALL))
    assert any("8 of 8 records dropped" in r.getMessage() for r in caplog.records)


def test_config_file_mirrors_cli_options(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("max-steps: 7\nbatch_size: 3\nlr: 1.0e-4\ndata: some/dir\n")
    config = TrainConfig.from_sources(path, out="o", batch_size=5, lr=None)
    assert (config.max_steps, config.batch_size, config.lr, config.data) == (7, 5, 1e-4, ["some/dir"])
    assert TrainConfig().lr == 5e-6 and TrainConfig().group_size == 8
    path.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown option 'learning_rate'"):
        read_config_file(path)
    with pytest.raises(ValueError, match="group_size"):
        TrainConfig(group_size=1)


def test_cpu_bf16_mixed_precision_follows_the_fp32_run(tmp_path: Path, tiny_embedder_dir: Path) -> None:
    """``cpu_bf16`` turns on bf16 autocast only where the CPU has bf16 matmuls; the weights stay fp32 and the
    per-step losses stay close to the fp32 run's."""
    from train_fixtures import write_task_file

    from llm_embedder.llm.fast import cpu_has_bf16
    from llm_embedder.train.examples import load_training_files

    data = write_task_file(tmp_path / "tool" / "train.jsonl", "tool", 8, scores=False)
    config = TrainConfig(data=[str(data)], out=str(tmp_path / "args"), base=str(tiny_embedder_dir),
                         **{**SMALL, "cpu_bf16": True})
    trainer = trainer_module.build_trainer(config, load_training_files(config.data, config.group_size, config.seed))
    assert trainer.args.bf16 == cpu_has_bf16()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    losses = {}
    for flag in (False, True):
        out = run(tmp_path / f"bf16-{flag}", data, tiny_embedder_dir, max_steps=4, save_steps=100, cpu_bf16=flag)
        losses[flag] = [s["loss"] for s in read_step_log(out / "logs" / "steps.rank0.jsonl")]
    assert len(losses[True]) == 4
    assert max(abs(a - b) for a, b in zip(losses[False], losses[True], strict=True)) < 0.05 * max(losses[False])


def test_base_mix_saves_the_interpolation_also_after_a_resume(tmp_path: Path, data_dir: Path,
                                                              tiny_embedder_dir: Path, monkeypatch) -> None:
    """base_mix 0.25 saves 0.75 x the trained weights + 0.25 x the starting model's, the trained weights being
    those of the same run without it; a run cut after a checkpoint and resumed saves the same."""
    from safetensors.torch import load_file

    plain = load_file(str(run(tmp_path / "plain", data_dir, tiny_embedder_dir) / "model.safetensors"))
    mixed_dir = run(tmp_path / "mixed", data_dir, tiny_embedder_dir, base_mix=0.25)
    mixed = load_file(str(mixed_dir / "model.safetensors"))
    base = load_file(str(tiny_embedder_dir / "model.safetensors"))
    assert mixed.keys() == plain.keys()
    moved = 0
    for name, value in mixed.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * plain[name] + 0.25 * base[name], rtol=1e-5, atol=1e-6)
            moved += not torch.allclose(value, plain[name])
        else:
            assert torch.equal(value, plain[name])
    assert moved > 10  # training moved the weights, so the mix differs from the trained model
    assert "Saved weights: 0.75 x trained + 0.25 x" in (mixed_dir / "TRAINING_CARD.md").read_text()
    assert json.loads((mixed_dir / "train_config.json").read_text())["base_mix"] == 0.25

    part = run_cut_at(8, monkeypatch, tmp_path / "part", data_dir, tiny_embedder_dir, base_mix=0.25)
    run(part, data_dir, tiny_embedder_dir, base_mix=0.25, resume=True)
    resumed = load_file(str(part / "model.safetensors"))
    for name, value in mixed.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("share", [1.0, 1.5, -0.1])
def test_base_mix_out_of_range_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="base_mix: must be"):
        TrainConfig(base_mix=share)
