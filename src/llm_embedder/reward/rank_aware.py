"""The optional rank-aware reward (the paper's 2024 revision, recipe §2.10), as implemented here.

The paper rewards a candidate by how much it raises the rank of the desired output among N outputs the LLM
samples on its own; its exact formula is not published. This module implements:

1. Sample N outputs s_1..s_N from the LLM given the prompt *without* a candidate (the template with an empty
   ``{key}``), temperature 1, seeded from the query so runs are reproducible; drop empty samples and those
   equal to the gold answer a (after stripping); duplicates are kept (they count as the LLM's belief).
2. For a prompt c (with candidate k, or the empty one), let l_c(x) be the mean per-token log-probability of x.
   The soft rank of the gold answer is  R(c) = 1 + sum_j sigmoid((l_c(s_j) - l_c(a)) / tau),  tau = 0.1,
   which tends to the plain rank 1 + #{j : l_c(s_j) > l_c(a)} as tau -> 0 but has no ties.
3. The reward of candidate k is  r_k = (R(empty) - R(k)) / N,  in (-1, 1): positive when the candidate moves
   the gold answer up among the LLM's own alternatives, negative when it pushes it down.

With no usable sample every r_k is 0. Cost: (N + 1) likelihood scores per candidate, plus N sampled outputs
per record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llm_embedder.reward.records import RecordPairs, split_template

TAU = 0.1


def soft_rank(gold: np.ndarray, samples: np.ndarray, tau: float = TAU) -> np.ndarray:
    """R = 1 + sum_j sigmoid((samples_j - gold) / tau); gold (m,), samples (m, N) -> (m,)."""
    if samples.shape[1] == 0:
        return np.ones_like(gold)
    z = np.clip((samples - gold[:, None]) / tau, -60, 60)
    return 1.0 + (1.0 / (1.0 + np.exp(-z))).sum(axis=1)


def rank_aware_reward(gold: np.ndarray, samples: np.ndarray, n: int, tau: float = TAU) -> np.ndarray:
    """Rewards for rows 1..m given row 0 = the prompt without candidate (see the module docstring)."""
    ranks = soft_rank(gold, samples, tau)
    return (ranks[0] - ranks[1:]) / max(n, 1)


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def draw_samples(lm: Any, prompt: str, answer: str, n: int) -> list[str]:
    """N sampled outputs for the candidate-free prompt (seeded by the prompt), minus empties and the gold."""
    import torch

    torch.manual_seed(_seed(prompt))
    budget = min(64, len(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 8)
    outputs = lm.generate(
        [prompt.rstrip(" ")], max_new_tokens=budget, stop=["\n"], chat=False, do_sample=True, temperature=1.0,
        top_k=0, num_return_sequences=n,
    )
    gold = answer.strip()
    return [o.strip() for o in outputs if o.strip() and o.strip() != gold]


def rank_aware_scores(
    pairsets: Sequence[RecordPairs],
    lm: Any,
    n_samples: int,
    batch_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Rank-aware teacher scores per record, in candidate order."""
    out = []
    for ps in pairsets:
        empty = split_template(ps.task.reward_template).format(key="", query=ps.query)
        samples = draw_samples(lm, empty, ps.answer, n_samples)
        prompts = [empty, *ps.prompts]
        outputs = [ps.answer, *samples]
        flat_p = [p for p in prompts for _ in outputs]
        flat_a = [o for _ in prompts for o in outputs]
        ll = lm.answer_logprob(flat_p, flat_a, batch_tokens=batch_tokens).reshape(len(prompts), len(outputs))
        out.append([float(x) for x in rank_aware_reward(ll[:, 0], ll[:, 1:], n_samples)])
        if progress is not None:
            progress(len(ps.prompts))
    return out
