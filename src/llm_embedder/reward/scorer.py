"""Scoring many records at once: every candidate of every record goes through one length-bucketed pass.

Pairs from all records are pooled, so short and long candidates from different queries share batches
(the LM's ``answer_logprob`` sorts by length and runs the head only at answer positions), and the scores
are split back per record in candidate order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from llm_embedder.reward.records import KeyFitter, RecordPairs, build_all


@dataclass
class ScoreStats:
    """Counts for the final summary."""

    records: int = 0
    scored: int = 0
    skipped_no_candidates: int = 0
    truncated_prompts: int = 0
    pairs: int = 0

    def add(self, pairsets: Iterable[RecordPairs]) -> None:
        for ps in pairsets:
            self.records += 1
            if ps.prompts:
                self.scored += 1
                self.pairs += len(ps.prompts)
                self.truncated_prompts += ps.truncated
            else:
                self.skipped_no_candidates += 1


def score_pairsets(
    pairsets: Sequence[RecordPairs],
    lm: Any,
    batch_tokens: int | None = None,
    rank_aware: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Teacher scores per record (in candidate order), pooling all pairs into one bucketed pass."""
    if rank_aware:
        from llm_embedder.reward.rank_aware import rank_aware_scores

        return rank_aware_scores(pairsets, lm, n_samples=rank_aware, batch_tokens=batch_tokens, progress=progress)
    prompts = [p for ps in pairsets for p in ps.prompts]
    answers = [ps.answer for ps in pairsets for _ in ps.prompts]
    flat = lm.answer_logprob(prompts, answers, batch_tokens=batch_tokens, progress=progress)
    out, lo = [], 0
    for ps in pairsets:
        out.append([float(x) for x in flat[lo : lo + len(ps.prompts)]])
        lo += len(ps.prompts)
    return out


def with_scores(record: dict[str, Any], scores: list[float]) -> dict[str, Any]:
    """A copy of the record with ``teacher_scores`` set (pos then neg, or per history turn)."""
    out = dict(record)
    out["teacher_scores"] = scores
    return out


def score_records(
    records: Sequence[dict[str, Any]],
    lm: Any,
    *,
    batch_tokens: int | None = None,
    default_task: str | None = None,
    rank_aware: int = 0,
    key_max_tokens: int | None = None,
    source: str = "<records>",
    stats: ScoreStats | None = None,
) -> list[dict[str, Any]]:
    """Records with ``teacher_scores``; records without candidates are left out (and counted in ``stats``).

    The score of a candidate is the mean log-probability of the record's answer given the task's reward
    template filled with that candidate (or the rank-aware reward when ``rank_aware`` > 0 samples).
    """
    fitter = KeyFitter(lm.tokenizer, lm.max_length, key_max_tokens)
    pairsets = build_all(list(enumerate(records, start=1)), source, fitter, default_task)
    if stats is not None:
        stats.add(pairsets)
    kept = [(rec, ps) for rec, ps in zip(records, pairsets, strict=True) if ps.prompts]
    scores = score_pairsets([ps for _, ps in kept], lm, batch_tokens=batch_tokens, rank_aware=rank_aware)
    return [with_scores(rec, s) for (rec, _), s in zip(kept, scores, strict=True)]


def as_array(scores: list[list[float]]) -> list[np.ndarray]:
    return [np.asarray(s, dtype=np.float64) for s in scores]
