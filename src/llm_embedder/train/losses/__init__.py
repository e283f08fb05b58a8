"""The three training losses of recipe §2.5, each a sentence-transformers loss module.

``loss_for_task(task, model)`` builds the loss a task's registry recipe names.
"""

from __future__ import annotations

from llm_embedder.tasks import Task, get_task
from llm_embedder.train.examples import DISTILL_LOSSES  # one definition, where the examples are built
from llm_embedder.train.losses.contrastive import ContrastiveLoss, contrastive_loss
from llm_embedder.train.losses.kl_distill import KLDistillLoss, kl_distill_loss
from llm_embedder.train.losses.stable_distill import StableDistillLoss, stable_distill_loss


def loss_for_task(task: str | Task, model, temperature: float = 0.01, loss: str | None = None):
    """The loss module for a task: contrastive, kl_distill (teacher T from the task) or stable_distill.

    ``loss`` overrides the registry's choice (the ablations: hard labels, plain KL)."""
    task = get_task(task)
    loss = loss or task.loss
    if loss == "contrastive":
        return ContrastiveLoss(model, temperature=temperature)
    if loss == "kl_distill":
        return KLDistillLoss(model, teacher_temperature=task.teacher_temperature, temperature=temperature)
    if loss == "stable_distill":
        return StableDistillLoss(model, temperature=temperature)
    raise ValueError(f"task {task.name!r}: unknown loss {loss!r}")


__all__ = [
    "ContrastiveLoss", "KLDistillLoss", "StableDistillLoss", "contrastive_loss", "kl_distill_loss",
    "stable_distill_loss", "loss_for_task", "DISTILL_LOSSES",
]
