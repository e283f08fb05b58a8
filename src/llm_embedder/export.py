"""Export an embedder to ONNX (fp32, optionally int8 dynamic quantization) for the ``onnx`` backends.

The output directory is the sentence-transformers model copied as is (so it still loads with torch, and
keeps its prompts, tokenizer and saved task instructions) plus::

    onnx/model.onnx         transformer: (input_ids, attention_mask) -> last_hidden_state, fp32
    onnx/model_qint8.onnx   the same with int8 weights (per-channel, dynamic activations), if asked
    onnx/export.json        pooling mode, include_prompt, normalize, max_seq_length, dim, prompts

Pooling and normalisation run in numpy at load time (``llm_embedder.onnx_encoder``), read from
``export.json``, so the exported model cannot silently switch a CLS model to mean pooling.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from llm_embedder.io import check_output_dir
from llm_embedder.models import resolve_embedder_path

ONNX_DIR = "onnx"
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
EXPORT_FILE = "export.json"
OPSET = 17
OUTPUT = "last_hidden_state"
SUPPORTED_POOLING = ("mean", "cls", "max", "lasttoken")
PARTIAL_SUFFIX = ".partial"  # the export is built in <out>.partial, renamed to <out> once complete
PARTIAL_MARKER = ".llm_embedder_partial_export"  # in a partial folder this tool made: only such a one is removed


def describe_model(st_model: Any) -> dict:
    """Pooling, normalisation and limits of a SentenceTransformer (Transformer -> Pooling [-> Normalize])."""
    modules = list(st_model)
    transformer = modules[0]
    if not hasattr(transformer, "auto_model"):
        raise ValueError(f"ONNX export needs a Transformer as the first module, got {type(transformer).__name__}")
    pooling = next((m for m in modules if type(m).__name__ == "Pooling"), None)
    if pooling is None:
        raise ValueError("ONNX export needs a Pooling module in the sentence-transformers model")
    names = [type(m).__name__ for m in modules]
    unsupported = [n for n in names if n not in (type(transformer).__name__, "Pooling", "Normalize")]
    if unsupported:
        raise ValueError(f"ONNX export supports Transformer, Pooling, Normalize modules; this model has {unsupported}")
    mode = pooling.pooling_mode
    if not isinstance(mode, str) or mode not in SUPPORTED_POOLING:
        raise ValueError(f"ONNX export supports pooling modes {SUPPORTED_POOLING}, this model uses {mode!r}")
    return {
        "pooling": mode,
        "include_prompt": bool(pooling.include_prompt),
        "normalize": "Normalize" in names,
        "max_seq_length": int(st_model.max_seq_length or 512),
        "dim": int(st_model.get_embedding_dimension()),
        "prompts": dict(st_model.prompts or {}),
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
    }


def export_onnx(model: str | Path, out: str | Path, *, quantize: str | None = None, overwrite: bool = False) -> Path:
    """Write an ONNX export of ``model`` (alias or sentence-transformers dir) to ``out``; returns ``out``.

    ``quantize="int8"`` also writes the int8 model (``Embedder(out, backend="onnx-int8")`` uses it).
    """
    import torch
    from sentence_transformers import SentenceTransformer

    from llm_embedder.extras import require_extra

    require_extra("onnx", "the ONNX export", ("onnx", "onnxruntime") if quantize else ("onnx",))
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be 'int8' or None, got {quantize!r}")
    source = resolve_embedder_path(model)
    out = Path(out)
    target = out.resolve()  # '.' or '..' has no name to put the partial folder beside
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise ValueError(f"--out {out} is the folder this runs in, or holds it ({target}): an export replaces its "
                         "whole folder; give a new folder, e.g. --out model-onnx")
    if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
        raise ValueError(f"--out {out} would replace the model directory {source} (or a folder holding it)")
    if source.resolve() in out.resolve().parents:  # its weights would count as the model's (model_version)
        raise ValueError(f"--out {out} is inside the model directory {source}; export next to it")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; an export is a directory")
    # --overwrite replaces an earlier export, never a folder of other files
    check_output_dir(out, (f"{ONNX_DIR}/{EXPORT_FILE}", ), "an ONNX export")
    replace = out.exists() and any(out.iterdir())
    if replace and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace it")
    tmp = target.with_name(target.name + PARTIAL_SUFFIX)
    check_partial_dir(tmp)  # before the model loads
    st_model = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    info = describe_model(st_model)
    if tmp.exists():  # an earlier export of ours that did not finish
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / PARTIAL_MARKER).write_text("an unfinished llm-embedder export (safe to delete)\n", encoding="utf-8")
    from llm_embedder.train.trainer import CHECKPOINT_DIR, LOG_DIR

    # a trained model's folder also holds its run: checkpoints (optimizer state, hundreds of MB) and step logs,
    # which a deployed model does not need
    ignored = shutil.ignore_patterns(ONNX_DIR, "__pycache__", PARTIAL_MARKER, CHECKPOINT_DIR, LOG_DIR)
    shutil.copytree(source, tmp, ignore=ignored, dirs_exist_ok=True)
    onnx_dir = tmp / ONNX_DIR
    onnx_dir.mkdir()
    wrapper = _HiddenStates(st_model[0].auto_model.float().eval())
    example = st_model[0].tokenizer(["an example", "a longer example text"], padding=True, return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant for BERT-like encoders
        torch.onnx.export(
            wrapper, (example["input_ids"], example["attention_mask"]), str(onnx_dir / FP32_FILE),
            dynamo=False, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
            output_names=[OUTPUT],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", OUTPUT)},
        )
    files = {"fp32": FP32_FILE}
    if quantize == "int8":
        quantize_int8(onnx_dir / FP32_FILE, onnx_dir / INT8_FILE)
        files["int8"] = INT8_FILE
    info["files"] = files
    (onnx_dir / EXPORT_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    (tmp / PARTIAL_MARKER).unlink()
    if target.exists():  # the old export goes only once the new one is complete
        shutil.rmtree(target)
    tmp.rename(target)
    return out


def check_partial_dir(tmp: Path) -> None:
    """Refuse a ``<out>.partial`` that this tool did not make (it has no ``PARTIAL_MARKER``): it was deleted
    unasked to build the export in; an unfinished export of an earlier run is fine (it is replaced)."""
    if not (tmp.exists() or tmp.is_symlink()):
        return
    if tmp.is_symlink() or not tmp.is_dir() or not (tmp / PARTIAL_MARKER).is_file():
        raise FileExistsError(f"{tmp} exists and is not an unfinished llm-embedder export (the export is built "
                              "there first); move it away or give another --out")


def quantize_int8(src: Path, dst: Path) -> Path:
    """int8 weights, per output channel, dynamic activation scales (MatMul only: keeps cosine > 0.98 on AVX2)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
    )
    return dst


class _HiddenStates:
    """Built lazily as an nn.Module: calls the HF model with keyword arguments (transformers 5 safe)."""

    def __new__(cls, model: Any):
        import torch

        class HiddenStates(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        return HiddenStates(model)
