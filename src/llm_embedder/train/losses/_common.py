"""Shared pieces of the loss modules: embedding a (query, group of keys) batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

COS_TEMPERATURE = 0.01  # τ of recipe §2.5: s(q, k) = <e_q, e_k> / τ on L2-normalised embeddings


def embed_batch(model, sentence_features: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised float32 query (B, d) and key (B·N, d) embeddings; key ``b·N + j`` is query b's j-th key.

    ``sentence_features`` is what the trainer passes to a loss: ``[query_features, keys_features]`` as
    produced by :class:`llm_embedder.train.collator.GroupCollator`.
    """
    if len(sentence_features) != 2:
        raise ValueError(f"expected [query_features, keys_features], got {len(sentence_features)} feature sets")
    queries = model(sentence_features[0])["sentence_embedding"]
    keys = model(sentence_features[1])["sentence_embedding"]
    if keys.shape[0] % queries.shape[0]:
        raise ValueError(f"{keys.shape[0]} keys do not split into groups for {queries.shape[0]} queries")
    return F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
