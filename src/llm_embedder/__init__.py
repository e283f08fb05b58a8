"""llm-embedder: one embedding model for every retrieval need of an LLM."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Embedder", "__version__"]

if TYPE_CHECKING:
    from llm_embedder.embedder import Embedder


def __getattr__(name: str):
    # imported lazily so that `llm-embedder --help` does not pay for torch
    if name == "Embedder":
        from llm_embedder.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'llm_embedder' has no attribute {name!r}")
