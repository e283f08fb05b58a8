"""Self-paced per-task learning rate (the 2024 revision, recipe §2.10; not in the released code).

At each step the learning rate is multiplied by ``L_T0 / L_T`` for the step's task T, where ``L_T`` is an
exponential moving average of T's loss and ``L_T0`` is that average as checkpointed every ``interval`` steps
(1000 in the paper; first value seen before the first checkpoint). A task whose loss rose since its checkpoint
gets a smaller step, one whose loss fell a larger one; the factor is clipped to [min_scale, max_scale]. The
scaling is applied just before ``optimizer.step()`` and undone after it, so the linear schedule is untouched.
The loss is averaged over ranks first, so every rank applies the same factor (DDP stays in sync).
The averages and references are saved with every checkpoint (``self_paced.json``) and restored on resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

STATE_FILE = "self_paced.json"


class SelfPacedLRCallback(TrainerCallback):
    """Scale the lr of each step by its task's ``L_T0 / L_T``; ``trainer`` is set by the trainer builder."""

    def __init__(self, interval: int = 1000, momentum: float = 0.9, min_scale: float = 0.5,
                 max_scale: float = 2.0) -> None:
        self.interval = interval
        self.momentum = momentum
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.average: dict[str, float] = {}
        self.reference: dict[str, float] = {}
        self.scales: list[tuple[int, str, float]] = []
        self.trainer = None

    def scale_for(self, task: str, loss: float) -> float:
        """Update T's moving average with this step's loss and return the clipped ``L_T0 / L_T``."""
        previous = self.average.get(task)
        self.average[task] = loss if previous is None else self.momentum * previous + (1 - self.momentum) * loss
        self.reference.setdefault(task, self.average[task])
        scale = self.reference[task] / max(self.average[task], 1e-12)
        return min(self.max_scale, max(self.min_scale, scale))

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        task = getattr(self.trainer, "current_task", None)
        loss = getattr(self.trainer, "current_loss", None)
        if task is None or loss is None or optimizer is None:
            return
        loss = _mean_over_ranks(loss)
        scale = self.scale_for(task, loss)
        self.scales.append((state.global_step + 1, task, scale))
        for group in optimizer.param_groups:
            group["lr_before_self_paced"] = group["lr"]
            group["lr"] = group["lr"] * scale

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        for group in optimizer.param_groups if optimizer is not None else []:
            if "lr_before_self_paced" in group:
                group["lr"] = group.pop("lr_before_self_paced")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.interval == 0:
            self.reference = dict(self.average)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                data = {"average": self.average, "reference": self.reference}
                (folder / STATE_FILE).write_text(json.dumps(data), encoding="utf-8")

    def load(self, checkpoint: str | Path) -> bool:
        """Restore the averages saved with a checkpoint; False when it has none (run without --self-paced)."""
        path = Path(checkpoint) / STATE_FILE
        if not path.exists():
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
        self.average, self.reference = dict(data["average"]), dict(data["reference"])
        return True


def _mean_over_ranks(value: float) -> float:
    from llm_embedder.train.gather import sum_over_ranks, world_size

    return sum_over_ranks(value) / world_size()
