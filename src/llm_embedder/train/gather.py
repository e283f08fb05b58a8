"""Cross-device gathering for in-batch negatives (recipe §2.5, §6).

``gather_with_grad`` all-gathers a tensor from every rank and puts the *local* tensor back at its own rank's
position, so autograd flows through the local slice (the other ranks' slices are constants here; each rank
back-propagates through its own). Without an initialised process group both functions return the input.
``sum_over_ranks`` adds one number over the ranks (the self-paced loss average, the scoring job's counts).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def sum_over_ranks(value: float) -> float:
    """``value`` summed over every rank of an initialised process group (``value`` alone without one)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # a GPU group reduces GPU tensors only
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item())


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, the local part keeping its gradient."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts, dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (labels, teacher scores)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def scale_for_ddp(loss: torch.Tensor) -> torch.Tensor:
    """Make DDP's gradient average equal the gradient of a loss that every rank computes in full.

    Each rank computes the same global loss L but back-propagates only through its own slice, and DDP
    averages gradients over W ranks, giving ∇L / W. Returning ``W·L − (W−1)·L.detach()`` keeps the value L
    while scaling the gradient by W, so the averaged gradient is exactly ∇L (as on one device).

    The reference code does not scale: its gathered losses (contrastive, stabilized distillation) step with ∇L / W
    on W processes, its KL loss (not gathered) with the full gradient. Here every loss steps as on one device, so a
    run on 2 processes trains like one process on the same global batch.
    """
    size = world_size()
    if size == 1:
        return loss
    return loss * size - loss.detach() * (size - 1)
