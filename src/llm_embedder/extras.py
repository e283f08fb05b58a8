"""The optional extras (``pip install "llm-embedder[serve]"``): a feature whose extra is not installed is refused
before any work, in one line naming the extra, rather than with an import traceback half-way through."""

from __future__ import annotations

from importlib.util import find_spec

# extra -> the modules it installs that the code imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("fastapi", "uvicorn", "prometheus_client"),
    "milvus": ("pymilvus", "milvus_lite"),
    "onnx": ("onnxruntime", "onnx"),
}


class MissingExtraError(ImportError):
    """A feature needs an optional extra that is not installed."""


def install_hint(extra: str) -> str:
    return f'pip install "llm-embedder[{extra}]"'


def require_extra(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise ``MissingExtraError`` naming ``feature`` and the extra where a module of it (``modules``: only these)
    is not installed."""
    missing = [name for name in modules or EXTRAS[extra] if find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"{feature} needs the {extra!r} extra: {install_hint(extra)} "
                                f"(missing: {', '.join(missing)})")


def extra_of(module: str | None) -> str | None:
    """The extra that installs ``module`` (a dotted name's top package), or None."""
    top = (module or "").partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)
