"""Self-paced per-task lr scaling (2024 revision): factor L_T0 / L_T, applied around optimizer.step only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llm_embedder.train.self_paced import SelfPacedLRCallback


def test_scale_follows_reference_over_moving_average() -> None:
    cb = SelfPacedLRCallback(interval=2, momentum=0.5, min_scale=0.1, max_scale=10.0)
    assert cb.scale_for("qa", 2.0) == 1.0  # first value is its own reference
    assert cb.scale_for("qa", 1.0) == pytest.approx(2.0 / 1.5)  # loss fell: larger step
    assert cb.scale_for("tool", 4.0) == 1.0  # tasks are independent
    cb.on_step_end(None, SimpleNamespace(global_step=2), None)  # checkpoint L_T0 = current averages
    assert cb.scale_for("qa", 1.5) == pytest.approx(1.5 / 1.5)
    assert SelfPacedLRCallback(max_scale=1.2).scale_for("x", 1.0) == 1.0
    clipped = SelfPacedLRCallback(momentum=0.0, max_scale=1.2)
    clipped.scale_for("x", 10.0)
    assert clipped.scale_for("x", 1.0) == 1.2


def test_lr_scaled_for_the_step_then_restored() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    cb = SelfPacedLRCallback(momentum=0.0)
    cb.trainer = SimpleNamespace(current_task="qa", current_loss=2.0)
    state = SimpleNamespace(global_step=0)
    cb.on_pre_optimizer_step(None, state, None, optimizer=optimizer)
    cb.trainer.current_loss = 1.6
    cb.on_optimizer_step(None, state, None, optimizer=optimizer)
    cb.on_pre_optimizer_step(None, state, None, optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 2.0 / 1.6)
    cb.on_optimizer_step(None, state, None, optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    assert [task for _, task, _ in cb.scales] == ["qa", "qa"]


def test_state_saved_with_checkpoint_and_restored(tmp_path) -> None:
    cb = SelfPacedLRCallback(momentum=0.0)
    cb.scale_for("qa", 2.0)
    cb.scale_for("qa", 1.0)
    (tmp_path / "checkpoint-3").mkdir()
    cb.on_save(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=3, is_world_process_zero=True),
               None)
    restored = SelfPacedLRCallback(momentum=0.0)
    assert restored.load(tmp_path / "checkpoint-3")
    assert (restored.average, restored.reference) == ({"qa": 1.0}, {"qa": 2.0})
    assert not SelfPacedLRCallback().load(tmp_path)
