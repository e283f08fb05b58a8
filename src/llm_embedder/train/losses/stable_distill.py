"""Stabilized ("graded") distillation: teacher-weighted listwise contrastive terms (recipe §2.5 (3); qa, icl)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_embedder.train.gather import gather_no_grad, gather_with_grad, scale_for_ddp
from llm_embedder.train.losses._common import COS_TEMPERATURE, embed_batch


def stable_distill_loss(
    queries: torch.Tensor, keys: torch.Tensor, teacher_scores: torch.Tensor, temperature: float = COS_TEMPERATURE
) -> torch.Tensor:
    """``Σ_i mean_b[ w_{b,i} · CE_i(b) ]`` with ``w = softmax(r)`` (no temperature).

    ``CE_i(b)`` is the cross-entropy of query b's row of the full score matrix (Q × Q·N) with target key
    ``b·N+i``, after masking the same query's higher-ranked keys ``b·N+0 … b·N+i-1`` to −inf. The denominator
    therefore holds the target, query b's lower-ranked keys, and every key of every other query.
    ``queries`` (Q, d), ``keys`` (Q·N, d), ``teacher_scores`` (Q, N), keys ordered as the scores.
    """
    num_queries = queries.shape[0]
    group_size = keys.shape[0] // num_queries
    weights = F.softmax(teacher_scores.to(queries.dtype), dim=-1)
    scores = queries @ keys.T / temperature
    rows = torch.arange(num_queries, device=queries.device)
    own_offset = torch.arange(keys.shape[0], device=queries.device)[None, :] - (rows * group_size)[:, None]
    total = scores.new_zeros(())
    for i in range(group_size):
        higher_ranked = (own_offset >= 0) & (own_offset < i)  # the same query's keys ranked above i
        masked = scores.masked_fill(higher_ranked, float("-inf"))
        per_query = F.cross_entropy(masked, rows * group_size + i, reduction="none")
        total = total + (weights[:, i] * per_query).mean()
    return total


class StableDistillLoss(nn.Module):
    """Stabilized distillation (paper §2.2.3; "graded distillation" in the 2024 revision), τ = 0.01.

    Inputs (``forward(sentence_features, labels)``):
      - ``sentence_features``: ``[query_features, keys_features]``: B queries and B·N keys, query b's
        candidates at ``b·N … b·N+N-1``, positive first, then negatives sorted by teacher score descending
        (see ``llm_embedder.train.examples``).
      - ``labels``: teacher scores, float tensor (B, N), in the same order as the keys. Required.
    Queries, keys and teacher scores are all-gathered across ranks (the local slice keeps its gradient), so
    every denominator holds the in-batch and cross-device keys; every rank computes the same global loss.
    """

    def __init__(self, model, temperature: float = COS_TEMPERATURE, gather_across_devices: bool = True) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.gather_across_devices = gather_across_devices

    def compute(self, queries: torch.Tensor, keys: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
        if not self.gather_across_devices:
            return stable_distill_loss(queries, keys, teacher_scores, self.temperature)
        loss = stable_distill_loss(
            gather_with_grad(queries), gather_with_grad(keys), gather_no_grad(teacher_scores), self.temperature
        )
        return scale_for_ddp(loss)

    def forward(self, sentence_features: list[dict], labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("StableDistillLoss needs teacher scores as labels")
        queries, keys = embed_batch(self.model, sentence_features)
        return self.compute(queries, keys, labels.to(queries.device).float())
