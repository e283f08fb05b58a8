"""Cross-device gathering with 2 real processes (gloo on CPU): the loss equals the one-process loss on the
global batch, and DDP's gradient average equals the one-process gradient."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from llm_embedder.train.gather import gather_no_grad, gather_with_grad, world_size
from llm_embedder.train.losses import ContrastiveLoss, KLDistillLoss, StableDistillLoss

B, N, D, WORLD = 2, 3, 4, 2


def global_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(B * WORLD, D, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B * WORLD * N, D, generator=g, dtype=torch.float64), dim=-1)
    r = torch.randn(B * WORLD, N, generator=g, dtype=torch.float64)
    return q, k, r


def losses():
    return {
        "contrastive": lambda q, k, r: ContrastiveLoss(None).compute(q, k),
        "stable": lambda q, k, r: StableDistillLoss(None).compute(q, k, r),
        "kl": lambda q, k, r: KLDistillLoss(None, teacher_temperature=0.1).compute(q, k, r),
    }


def worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    q, k, r = global_batch()
    results = {"world": world_size(), "gathered": gather_no_grad(torch.tensor([rank])).tolist()}
    local = torch.ones(1, requires_grad=True)
    gather_with_grad(local * (rank + 1)).sum().backward()
    results["local_grad"] = local.grad.item()  # only the local slice carries a gradient
    for name, fn in losses().items():
        q_local = q[rank * B:(rank + 1) * B].clone().requires_grad_(True)
        k_local = k[rank * B * N:(rank + 1) * B * N].clone().requires_grad_(True)
        loss = fn(q_local, k_local, r[rank * B:(rank + 1) * B])
        loss.backward()
        results[name] = (loss.item(), q_local.grad.clone(), k_local.grad.clone())
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert ranks[0]["world"] == WORLD and ranks[0]["gathered"] == [0, 1]
    assert [r["local_grad"] for r in ranks] == [1.0, 2.0]
    q, k, r = global_batch()
    for name, fn in losses().items():
        qf, kf = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        full = fn(qf, kf, r)
        full.backward()
        if name == "kl":  # own candidates only: each rank's loss is its local mean, DDP averages them
            assert sum(x[name][0] for x in ranks) / WORLD == pytest.approx(full.item(), rel=1e-9)
        else:  # every rank computes the same global loss
            for x in ranks:
                assert x[name][0] == pytest.approx(full.item(), rel=1e-9)
        # DDP averages the ranks' gradients; each rank holds the gradient of its own slice.
        q_grad = torch.cat([x[name][1] for x in ranks]) / WORLD
        k_grad = torch.cat([x[name][2] for x in ranks]) / WORLD
        torch.testing.assert_close(q_grad, qf.grad)
        torch.testing.assert_close(k_grad, kf.grad)


def test_single_process_is_a_no_op() -> None:
    t = torch.arange(3.0)
    assert gather_with_grad(t) is t and gather_no_grad(t) is t and world_size() == 1
