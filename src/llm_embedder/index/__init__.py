"""Vector indexes: FAISS in-process (default) or Milvus (Lite file or cluster URI), one contract."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_embedder.index.base import (
    EmptyIndexError,
    FilterError,
    IndexFormatError,
    IndexUnavailableError,
    KLimitError,
    NonFiniteVectorsError,
    VectorIndex,
    open_index,
)
from llm_embedder.index.faiss_index import FaissIndex

if TYPE_CHECKING:
    from llm_embedder.index.milvus_index import MilvusIndex

__all__ = [
    "EmptyIndexError", "FaissIndex", "FilterError", "IndexFormatError", "IndexUnavailableError", "KLimitError",
    "MilvusIndex", "NonFiniteVectorsError", "VectorIndex", "open_index",
]


def __getattr__(name: str) -> Any:
    """Import MilvusIndex lazily, so pymilvus is only needed when Milvus is used."""
    if name == "MilvusIndex":
        from llm_embedder.index.milvus_index import MilvusIndex

        return MilvusIndex
    raise AttributeError(name)
