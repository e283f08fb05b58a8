"""The answer log-likelihood kernel: token pairs, length-bucketed batches, an LM head only at answer positions.

A small model's vocabulary projection (49k x 576 for SmolLM2) is a fifth of its per-token compute and its
log-softmax is as costly again, yet the reward needs it only where an answer token is predicted. So the body
runs once over right-padded, length-sorted batches, and the head plus log-softmax run over the few gathered
answer positions. ``full_logits_logprob`` is the straightforward computation it must agree with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class EncodedPairs:
    """Token ids of prompt+answer per pair, the index of the first scored (answer) token, and truncation flags."""

    ids: list[list[int]]
    starts: list[int]
    truncated: list[bool]


def split_boundary(prompt: str, answer: str) -> tuple[str, str]:
    """Move the prompt's trailing spaces onto the answer, so ``"Answer: " + "Paris"`` scores the token " Paris"."""
    stripped = prompt.rstrip(" ")
    return stripped, prompt[len(stripped) :] + answer


def encode_pairs(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], max_length: int) -> EncodedPairs:
    """Tokenise prompt+answer as one text; answer tokens are those ending after the prompt's last character.

    Tokenising the joined text keeps the tokenisation the LM saw in training at the boundary. Trailing special
    tokens (an EOS some tokenizers append) are dropped. A pair longer than ``max_length`` loses tokens on the
    left (prompt side) and is flagged as truncated.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    pairs = [split_boundary(p, a) for p, a in zip(prompts, answers, strict=True)]
    for i, (_, answer) in enumerate(pairs):
        if not answer.strip():
            raise ValueError(f"answer #{i} is empty; there is nothing to score")
    texts = [p + a for p, a in pairs]
    enc = tokenizer(texts, return_offsets_mapping=True, add_special_tokens=True)
    out = EncodedPairs([], [], [])
    for (prompt, _), ids, offsets in zip(pairs, enc["input_ids"], enc["offset_mapping"], strict=True):
        boundary = len(prompt)
        end = len(ids)
        while end > 0 and offsets[end - 1][1] <= offsets[end - 1][0]:  # trailing special tokens
            end -= 1
        start = end
        while start > 0 and offsets[start - 1][1] > boundary and offsets[start - 1][1] > offsets[start - 1][0]:
            start -= 1
        ids = list(ids[:end])
        truncated = len(ids) > max_length
        if truncated:
            cut = len(ids) - max_length
            ids = ids[cut:]
            start -= cut
        start = max(start, 1)  # the first token of a sequence has no prediction
        if start >= len(ids):
            raise ValueError(f"answer {answers[len(out.ids)]!r} produced no scorable token")
        out.ids.append(ids)
        out.starts.append(start)
        out.truncated.append(truncated)
    return out


def plan_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Length bucketing: indices sorted longest first, cut into batches of at most ``batch_tokens`` padded tokens."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _head(model: Any, hidden: Any) -> Any:
    """Logits for a (N, H) block of hidden states, with the model's final soft-capping if it has one."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def score_batch(model: Any, seqs: Sequence[Sequence[int]], starts: Sequence[int], head_rows: int = 2048) -> np.ndarray:
    """Mean answer log-prob for one right-padded batch; the head runs only at answer-predicting positions.

    No attention mask is passed: in a causal LM a real token never attends to the padding after it, and
    positions count from 0 either way, so the scores are the same, while a mask-free batch can use the fused
    causal attention kernels (``tests/llm/test_causal_lm.py`` checks them against ``full_logits_logprob``).
    """
    import torch

    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    input_ids = torch.zeros((len(seqs), width), dtype=torch.long)
    rows, cols = [], []
    for b, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        input_ids[b, : len(seq)] = torch.tensor(seq)
        rows.extend([b] * (len(seq) - start))
        cols.extend(range(start - 1, len(seq) - 1))
    input_ids = input_ids.to(device)
    rows_t = torch.tensor(rows, device=device)
    cols_t = torch.tensor(cols, device=device)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=input_ids).last_hidden_state
        picked = hidden[rows_t, cols_t]
        targets = input_ids[rows_t, cols_t + 1]
        token_lp = []
        for lo in range(0, len(rows), head_rows):
            logprobs = torch.log_softmax(_head(model, picked[lo : lo + head_rows]), dim=-1)
            token_lp.append(logprobs.gather(1, targets[lo : lo + head_rows, None])[:, 0])
        lp = torch.cat(token_lp).double().cpu()
    sums = torch.zeros(len(seqs), dtype=torch.float64).index_add_(0, rows_t.cpu(), lp)
    counts = torch.tensor([len(s) - st for s, st in zip(seqs, starts, strict=True)], dtype=torch.float64)
    return (sums / counts).numpy()


def bucketed_logprob(model: Any, enc: EncodedPairs, batch_tokens: int, progress: Any = None) -> np.ndarray:
    """Score every encoded pair with length-bucketed batches; results come back in input order."""
    scores = np.empty(len(enc.ids), dtype=np.float64)
    for batch in plan_batches([len(s) for s in enc.ids], batch_tokens):
        scores[batch] = score_batch(model, [enc.ids[i] for i in batch], [enc.starts[i] for i in batch])
        if progress is not None:
            progress(len(batch))
    return scores


def full_logits_logprob(
    model: Any, enc: EncodedPairs, batch_size: int = 1, padding_side: str = "right"
) -> np.ndarray:
    """The straightforward computation: batches in input order, logits and log-softmax at every position.

    ``batch_size=1`` is the naive scorer; ``batch_size=4, padding_side="left"`` is the reference code's way.
    """
    import torch

    device = next(model.parameters()).device
    scores = np.empty(len(enc.ids), dtype=np.float64)
    for lo in range(0, len(enc.ids), batch_size):
        seqs = enc.ids[lo : lo + batch_size]
        width = max(len(s) for s in seqs)
        input_ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        pads = []
        for b, seq in enumerate(seqs):
            pad = width - len(seq) if padding_side == "left" else 0
            input_ids[b, pad : pad + len(seq)] = torch.tensor(seq)
            mask[b, pad : pad + len(seq)] = 1
            pads.append(pad)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device)
            ).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for b, seq in enumerate(seqs):
            start, pad = enc.starts[lo + b], pads[b]
            positions = torch.arange(start - 1, len(seq) - 1) + pad
            targets = torch.tensor(seq[start:])
            scores[lo + b] = logprobs[b, positions, targets].double().mean().item()
    return scores
