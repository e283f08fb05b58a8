"""InfoNCE over hard negatives plus every in-batch and cross-device key (recipe §2.5 (1); tool, convsearch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llm_embedder.train.gather import gather_with_grad, scale_for_ddp
from llm_embedder.train.losses._common import COS_TEMPERATURE, embed_batch


def contrastive_loss(queries: torch.Tensor, keys: torch.Tensor, temperature: float = COS_TEMPERATURE) -> torch.Tensor:
    """Cross-entropy of each query over all keys, target = its own positive.

    ``queries`` (Q, d) and ``keys`` (Q·N, d) are L2-normalised; key ``i·N`` is query i's positive, keys
    ``i·N+1 … i·N+N-1`` its hard negatives, and every other key is an in-batch negative.
    """
    group_size = keys.shape[0] // queries.shape[0]
    scores = queries @ keys.T / temperature
    targets = torch.arange(queries.shape[0], device=queries.device) * group_size
    return F.cross_entropy(scores, targets)


class ContrastiveLoss(nn.Module):
    """Contrastive InfoNCE loss (τ = 0.01) over the group's hard negatives and all in-batch keys.

    Inputs (``forward(sentence_features, labels)``):
      - ``sentence_features``: ``[query_features, keys_features]``; the query batch has B texts and the
        key batch B·N texts, query b's group at ``b·N … b·N+N-1`` with its positive first.
      - ``labels``: ignored (teacher scores, if the task has them, are not used by this loss).
    With several processes, queries and keys are all-gathered (local slice keeps its gradient), so every
    query is contrasted with the keys of every rank; every rank computes the same global loss.
    """

    def __init__(self, model, temperature: float = COS_TEMPERATURE, gather_across_devices: bool = True) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.gather_across_devices = gather_across_devices

    def compute(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The loss from this rank's normalised embeddings (gathers them first when distributed)."""
        if not self.gather_across_devices:
            return contrastive_loss(queries, keys, self.temperature)
        loss = contrastive_loss(gather_with_grad(queries), gather_with_grad(keys), self.temperature)
        return scale_for_ddp(loss)

    def forward(self, sentence_features: list[dict], labels: torch.Tensor | None = None) -> torch.Tensor:
        queries, keys = embed_batch(self.model, sentence_features)
        return self.compute(queries, keys)

    @property
    def citation(self) -> str:
        return "Zhang et al. 2023, Retrieve Anything To Augment Large Language Models, eq. 2"
