"""CPU fast modes for scoring: bf16 Linear layers (where the CPU has bf16 matmuls) or int8 dynamic quantization.

Scoring time on a CPU is ~80% matmuls (torch.profiler on SmolLM2), so both modes speed up the Linear layers
and leave the rest fp32. Scores are approximate: ``benchmarks/bench_reward.py --fast`` measures their rank
agreement (Spearman per query) with exact mode.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

FAST_MODES = ("auto", "bf16", "int8")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX); elsewhere bf16 would be slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_fast_mode(fast: str | None, device: torch.device) -> str | None:
    """The fast mode to use: None (exact), "bf16" or "int8"; "auto" prefers bf16 where the CPU has it."""
    if fast is None:
        return None
    if fast not in FAST_MODES:
        raise ValueError(f"fast must be None or one of {', '.join(FAST_MODES)}; got {fast!r}")
    if device.type != "cpu":
        raise ValueError(f"the fast modes are for CPU; on {device.type} the model already runs in bf16")
    if fast == "auto":
        return "bf16" if cpu_has_bf16() else "int8"
    return fast


class Bf16Linear(nn.Module):
    """A Linear layer with bf16 weights: casts its input to bf16 and its output back to the input's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.detach().to(torch.bfloat16), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def bf16_linears(model: nn.Module) -> nn.Module:
    """Replace the body's Linear layers by ``Bf16Linear`` in place; an LM head stays fp32.

    The residual stream, norms, attention, LM head and log-softmax stay fp32. On a CPU with AVX512-BF16 a
    bf16 matmul runs ~2.6x an fp32 one. Unlike autocast, the weights are cast once, not on every call.
    Works on any module (an embedder's encoder too); only models with ``get_output_embeddings`` have a head.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child is not head:
                setattr(parent, name, Bf16Linear(child))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """int8 dynamic quantization (per-channel weights) of the Linear layers, for CPUs without bf16.

    ``down_proj`` (activation outliers) and the LM head (run only at answer positions anyway) stay fp32:
    quantizing them too cost the most rank agreement with exact scores in our measurements. Activations are
    quantized per tensor, which costs rank agreement among candidates of close scores.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    head = model.get_output_embeddings()
    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and "down_proj" not in name and module is not head
    }
    with warnings.catch_warnings():  # torch announces a future removal of quantized tensors on every layer
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*", category=UserWarning)
        return quantize_dynamic(model, spec, dtype=torch.qint8)
