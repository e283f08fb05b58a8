"""Each loss against a direct computation (numpy loops) on small score matrices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llm_embedder.train.losses import (
    ContrastiveLoss,
    KLDistillLoss,
    StableDistillLoss,
    contrastive_loss,
    kl_distill_loss,
    loss_for_task,
    stable_distill_loss,
)

TAU = 0.01


def log_softmax_np(row: np.ndarray) -> np.ndarray:
    row = row - row.max()
    return row - np.log(np.exp(row).sum())


def embeddings(b: int = 3, n: int = 4, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(b * n, d, generator=g, dtype=torch.float64), dim=-1)
    r = torch.randn(b, n, generator=g, dtype=torch.float64)
    return q, k, r


def test_contrastive_matches_loop() -> None:
    q, k, _ = embeddings()
    b, n = 3, 4
    s = (q @ k.T).numpy() / TAU
    expected = np.mean([-log_softmax_np(s[i])[i * n] for i in range(b)])
    assert contrastive_loss(q, k, TAU).item() == pytest.approx(expected, rel=1e-9)


def test_kl_distill_matches_loop_and_uses_only_own_candidates() -> None:
    q, k, r = embeddings()
    b, n, t = 3, 4, 0.1
    total = 0.0
    for i in range(b):
        own = np.array([q[i].numpy() @ k[i * n + j].numpy() for j in range(n)]) / TAU
        student = log_softmax_np(own)
        teacher = np.exp(log_softmax_np(r[i].numpy() / t))
        total += float(np.sum(teacher * (np.log(teacher) - student)))
    assert kl_distill_loss(q, k, r, t, TAU).item() == pytest.approx(total / b, rel=1e-9)
    # another query's keys do not enter: changing them leaves the loss unchanged
    k2 = k.clone()
    k2[n:2 * n] = F.normalize(torch.randn(n, k.shape[1], dtype=torch.float64), dim=-1)
    first = kl_distill_loss(q[:1], k[:n], r[:1], t).item()
    assert first == pytest.approx(kl_distill_loss(q[:1], k2[:n], r[:1], t).item())


def stable_reference(q: np.ndarray, k: np.ndarray, r: np.ndarray) -> float:
    """Paper form: Σ_i mean_b w_bi · −log(exp s(q_b, p_i) / Σ_{p' in P_i} exp s(q_b, p')), P_i = own keys ranked
    at i or below, plus every other query's keys."""
    b, n = r.shape
    s = q @ k.T / TAU
    w = np.exp(r - r.max(axis=1, keepdims=True))
    w = w / w.sum(axis=1, keepdims=True)
    total = 0.0
    for i in range(n):
        per_query = []
        for row in range(b):
            allowed = [c for c in range(b * n) if not (c // n == row and c % n < i)]
            logits = s[row, allowed]
            target = allowed.index(row * n + i)
            per_query.append(w[row, i] * -log_softmax_np(logits)[target])
        total += float(np.mean(per_query))
    return total


def test_stable_distill_matches_loop() -> None:
    q, k, r = embeddings()
    expected = stable_reference(q.numpy(), k.numpy(), r.numpy())
    assert stable_distill_loss(q, k, r, TAU).item() == pytest.approx(expected, rel=1e-9)


def test_stable_distill_masks_higher_ranked_keys_of_the_same_query_only() -> None:
    q, k, r = embeddings(b=2, n=3)
    n = 3
    # Only the last rank position: weights one-hot on i = 2.
    r_last = torch.tensor([[-50.0, -50.0, 50.0], [-50.0, -50.0, 50.0]], dtype=torch.float64)
    base = stable_distill_loss(q, k, r_last, TAU).item()
    # Moving query 0's higher-ranked keys (positions 0, 1) changes nothing: they are masked for i = 2.
    moved = k.clone()
    moved[0:2] = F.normalize(torch.randn(2, k.shape[1], dtype=torch.float64), dim=-1)
    w_last = stable_distill_loss(q, moved, r_last, TAU).item()
    # query 1 still sees query 0's keys as in-batch negatives, so only query 0's term is invariant
    s_q0_only = stable_distill_loss(q[:1], k[:n], r_last[:1], TAU).item()
    s_q0_moved = stable_distill_loss(q[:1], moved[:n], r_last[:1], TAU).item()
    assert s_q0_only == pytest.approx(s_q0_moved, rel=1e-12)
    assert base != pytest.approx(w_last)  # query 1's denominator holds query 0's keys (in-batch)
    # One-hot weight on the top position: plain InfoNCE over all keys.
    r_first = torch.tensor([[50.0, -50.0, -50.0], [50.0, -50.0, -50.0]], dtype=torch.float64)
    assert stable_distill_loss(q, k, r_first, TAU).item() == pytest.approx(contrastive_loss(q, k, TAU).item(), rel=1e-6)


def test_modules_embed_with_the_model(tiny_embedder) -> None:
    from llm_embedder.train.collator import GroupCollator

    model = tiny_embedder.model
    collator = GroupCollator(preprocess_fn=model.preprocess, query_max_length=32, key_max_length=32)
    rows = [
        {"query": "q one", "keys": ["a", "b", "c"], "label": [0.0, -1.0, -2.0], "task": "qa"},
        {"query": "q two", "keys": ["d", "e", "f"], "label": [0.0, -1.0, -3.0], "task": "qa"},
    ]
    batch = collator(rows)
    features = [{k[len(p):]: v for k, v in batch.items() if k.startswith(p)} for p in ("query_", "keys_")]
    q = torch.tensor(tiny_embedder.encode_queries(["q one", "q two"], "qa"), dtype=torch.float32)
    k = torch.tensor(tiny_embedder.encode_keys(list("abcdef"), "qa"), dtype=torch.float32)
    labels = batch["label"]
    with torch.no_grad():
        assert ContrastiveLoss(model)(features, labels).item() == pytest.approx(contrastive_loss(q, k).item(), rel=1e-4)
        assert StableDistillLoss(model)(features, labels).item() == pytest.approx(
            stable_distill_loss(q, k, labels).item(), rel=1e-4)
        assert KLDistillLoss(model, teacher_temperature=0.1)(features, labels).item() == pytest.approx(
            kl_distill_loss(q, k, labels, 0.1).item(), rel=1e-4)
    with pytest.raises(ValueError, match="teacher scores"):
        KLDistillLoss(model)(features, None)


def test_loss_for_task_follows_the_registry(tiny_embedder) -> None:
    model = tiny_embedder.model
    assert isinstance(loss_for_task("qa", model), StableDistillLoss)
    assert isinstance(loss_for_task("tool", model), ContrastiveLoss)
    chat = loss_for_task("chat", model)
    assert isinstance(chat, KLDistillLoss) and chat.teacher_temperature == 0.1
