"""KL distillation from teacher scores over the query's own candidates (recipe §2.5 (2); chat, lrlm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_embedder.train.losses._common import COS_TEMPERATURE, embed_batch


def kl_distill_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    teacher_scores: torch.Tensor,
    teacher_temperature: float,
    temperature: float = COS_TEMPERATURE,
) -> torch.Tensor:
    """KL(teacher ‖ student) per query over its N candidates, averaged over queries (``batchmean``).

    Student: ``log_softmax(<e_q, e_k> / τ)``; teacher: ``softmax(r / T)``. ``queries`` (B, d), ``keys``
    (B·N, d), ``teacher_scores`` (B, N), all for the same B queries.
    """
    batch, dim = queries.shape
    grouped = keys.view(batch, -1, dim)
    scores = torch.einsum("bd,bnd->bn", queries, grouped) / temperature
    student = F.log_softmax(scores, dim=-1)
    teacher = F.softmax(teacher_scores.to(queries.dtype) / teacher_temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean")


class KLDistillLoss(nn.Module):
    """KL distillation: student softmax (τ = 0.01) towards the teacher softmax at the task's temperature.

    Inputs (``forward(sentence_features, labels)``):
      - ``sentence_features``: ``[query_features, keys_features]`` (B queries, B·N keys, group b at
        ``b·N … b·N+N-1``).
      - ``labels``: teacher scores, float tensor (B, N), in the same order as the keys. Required.
    Only the query's own candidates enter the softmax: no in-batch or cross-device keys, so nothing is
    gathered; DDP's gradient average over ranks equals the gradient of the mean over all queries.
    """

    def __init__(self, model, teacher_temperature: float = 1.0, temperature: float = COS_TEMPERATURE) -> None:
        super().__init__()
        self.model = model
        self.teacher_temperature = teacher_temperature
        self.temperature = temperature

    def compute(self, queries: torch.Tensor, keys: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
        return kl_distill_loss(queries, keys, teacher_scores, self.teacher_temperature, self.temperature)

    def forward(self, sentence_features: list[dict], labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("KLDistillLoss needs teacher scores as labels")
        queries, keys = embed_batch(self.model, sentence_features)
        return self.compute(queries, keys, labels.to(queries.device))
