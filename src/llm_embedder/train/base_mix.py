"""Mix the trained weights with the weights training started from, before the model is saved.

Each floating-point parameter and buffer is saved as ``(1 - share) * trained + share * start``: weight-space
interpolation with the starting model (WiSE-FT, Wortsman et al. 2022; BAAI's LM-Cocktail, 2023, for their own
embedders). It keeps part of what the starting model did well where a short fine-tuning run moved away from it.
``share`` 0 saves the trained weights (the paper's recipe); the demo uses 0.25, chosen on the dev split
(``docs/demo_findings.md``). Checkpoints hold the trained weights, so a resumed run mixes the same way.
"""

from __future__ import annotations

import torch


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's floating-point weights, taken before training changes them."""
    return {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()
            if value.is_floating_point()}


@torch.no_grad()
def mix_into(model: torch.nn.Module, start: dict[str, torch.Tensor], share: float) -> None:
    """Set each floating-point weight of ``model`` to ``(1 - share) * itself + share * start``, in place."""
    from llm_embedder.train.config import check_value

    try:
        check_value("base_mix", share)
    except ValueError as err:
        raise ValueError(f"base_mix: {err}") from None
    for name, value in model.state_dict().items():
        if not value.is_floating_point():
            continue
        if name not in start or start[name].shape != value.shape:
            raise ValueError(f"base_mix: the starting model has no weight {name!r} of shape {tuple(value.shape)}")
        mixed = value.float() * (1 - share) + start[name].to(value.device).float() * share
        value.copy_(mixed.to(value.dtype))
