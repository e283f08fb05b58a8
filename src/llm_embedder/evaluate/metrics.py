"""Retrieval metrics over ranked id lists: MRR, Recall and NDCG at cutoffs (binary relevance)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_CUTOFFS = (1, 3, 5, 10)


def reciprocal_rank(ranked: Sequence[int], gold: set[int], cutoff: int) -> float:
    for rank, doc in enumerate(ranked[:cutoff], start=1):
        if doc in gold:
            return 1.0 / rank
    return 0.0


def recall(ranked: Sequence[int], gold: set[int], cutoff: int) -> float:
    return len(gold.intersection(ranked[:cutoff])) / len(gold)


def ndcg(ranked: Sequence[int], gold: set[int], cutoff: int) -> float:
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:cutoff], start=1) if doc in gold)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), cutoff) + 1))
    return dcg / ideal


METRICS = {"mrr": reciprocal_rank, "recall": recall, "ndcg": ndcg}


def per_query_metric(rankings: Sequence[Sequence[int]], golds: Sequence[Sequence[int]], metric: str) -> list[float]:
    """One metric ("ndcg@5") per query that has a gold id, for paired comparisons between systems."""
    kind, _, cutoff = metric.partition("@")
    if kind not in METRICS or not cutoff.isdigit():
        raise ValueError(f"unknown retrieval metric {metric!r}; use mrr@k, recall@k or ndcg@k")
    return [METRICS[kind](list(r), set(g), int(cutoff)) for r, g in zip(rankings, golds, strict=True) if len(g) > 0]


def retrieval_metrics(
    rankings: Sequence[Sequence[int]], golds: Sequence[Sequence[int]], cutoffs: Sequence[int] = DEFAULT_CUTOFFS
) -> dict[str, float]:
    """Mean MRR@k, Recall@k and NDCG@k over queries that have at least one gold id."""
    if len(rankings) != len(golds):
        raise ValueError(f"{len(rankings)} rankings but {len(golds)} gold lists")
    pairs = [(list(r), set(g)) for r, g in zip(rankings, golds, strict=True) if len(g) > 0]
    if not pairs:
        return {}
    out: dict[str, float] = {}
    for cutoff in cutoffs:
        out[f"mrr@{cutoff}"] = float(np.mean([reciprocal_rank(r, g, cutoff) for r, g in pairs]))
        out[f"recall@{cutoff}"] = float(np.mean([recall(r, g, cutoff) for r, g in pairs]))
        out[f"ndcg@{cutoff}"] = float(np.mean([ndcg(r, g, cutoff) for r, g in pairs]))
    return out


def paired_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of a[i] − b[i]: how far apart two systems are on the same queries, and how
    much of that a different sample of queries could undo."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"paired difference needs two equal lists of at least 2 values, got {len(a)} and {len(b)}")
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(len(diff)))


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, articles and extra spaces (SQuAD-style normalisation)."""
    import re
    import string

    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_match(prediction: str, answers: Sequence[str]) -> bool:
    """True when a normalised gold answer occurs in the normalised prediction."""
    pred = normalize_answer(prediction)
    return any(normalize_answer(a) and normalize_answer(a) in pred for a in answers)
