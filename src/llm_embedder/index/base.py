"""The ``VectorIndex`` contract shared by every backend, input checks, and ``open_index`` dispatch.

Contract (every backend, tested by one parametrized suite):

* vectors are L2-normalised by the index on ``add`` and ``search``; scores are inner products (cosine);
* ids are caller-chosen int64 values, unique within the index (a duplicate is an error, nothing is written);
* ``search(vectors, k)`` returns ``(scores, ids)`` of shape ``(n, k)``; when fewer than ``k`` items match
  (``k`` larger than the index, or a filter), the row is **padded** with id ``-1`` and score ``-inf``;
* searching an empty index raises ``EmptyIndexError``;
* ``filter`` is a mapping ``{field: value}`` or ``{field: [v1, v2]}`` over the metadata given to ``add``;
  all fields must match (AND), a list means any of its values (IN); values compare as JSON's do (``value_key``):
  ``true`` matches only ``true``, never the number 1, and ``1`` matches 1 and 1.0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

PAD_ID = -1
PAD_SCORE = float("-inf")
MILVUS_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")


class IndexFormatError(ValueError):
    """An index file is missing parts, truncated or corrupt."""


class EmptyIndexError(ValueError):
    """A search was run on an index that holds no vectors."""


class KLimitError(ValueError):
    """A search asked for more hits per query (``k``) than the backend can return (a Milvus server's cap)."""


class FilterError(ValueError):
    """A search filter that cannot be used: not a mapping, a bad field name or value, a field the index lacks."""


class NonFiniteVectorsError(ValueError):
    """Vectors given to an index hold NaN or infinite values."""


class IndexUnavailableError(ValueError):
    """The index's backend cannot be reached (a Milvus server stopped, a Lite database another process holds): the
    request was not refused, and may succeed later."""


@runtime_checkable
class VectorIndex(Protocol):
    """What the retriever and the server need from a vector index."""

    backend: str

    @property
    def dim(self) -> int: ...

    @property
    def count(self) -> int: ...

    def add(self, ids: Sequence[int], vectors: np.ndarray, metadata: list[dict] | None = None) -> None: ...

    def search(
        self, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None = None, *, nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def delete(self, ids: Sequence[int]) -> int: ...

    def held(self, ids: Sequence[int]) -> list[int]: ...

    def held_from(self, start: int) -> list[int]: ...

    def save(self, path: str | Path | None = None) -> Path: ...

    def close(self) -> None: ...


def check_vectors(vectors: Any, dim: int, what: str = "vectors", *, copy: bool = True) -> np.ndarray:
    """A C-contiguous, L2-normalised float32 copy of ``vectors`` (1-D means one row); wrong shapes name dims.

    ``copy=False`` normalises a writeable C-contiguous float32 array in place instead (same values, no second
    buffer): for callers that own a large array they no longer need, such as the index build's chunks.
    """
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, {dim}), got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{what} have dimension {array.shape[1]}, but the index has dimension {dim}")
    if not np.isfinite(array).all():
        raise NonFiniteVectorsError(f"{what} contain NaN or infinite values")
    if copy or not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    np.divide(array, norms, out=array, where=norms > 0)
    return array


def check_ids(ids: Sequence[int] | np.ndarray, n: int | None = None) -> np.ndarray:
    """int64 ids, one per vector, without duplicates inside the batch."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValueError(f"ids must be a 1-D sequence of integers, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if n is not None and len(array) != n:
        raise ValueError(f"got {len(array)} ids for {n} vectors")
    if array.size and array.min() < 0:
        raise ValueError(f"ids must be >= 0 (-1 marks padding), got {int(array.min())}")
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"duplicate ids in the batch: {unique[counts > 1][:10].tolist()}")
    return array


def check_metadata(metadata: list[dict] | None, n: int) -> list[dict] | None:
    if metadata is None:
        return None
    if len(metadata) != n:
        raise ValueError(f"got {len(metadata)} metadata records for {n} vectors")
    for i, item in enumerate(metadata):
        if not isinstance(item, Mapping):
            raise ValueError(f"metadata[{i}] must be a dict, got {type(item).__name__}")
    return [dict(item) for item in metadata]


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_effort(nprobe: int | None, ef_search: int | None) -> dict[str, int]:
    """The search-effort settings given (IVF ``nprobe``, HNSW ``ef_search``), as keyword arguments; each a
    positive integer."""
    given = {name: value for name, value in (("nprobe", nprobe), ("ef_search", ef_search)) if value is not None}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return {name: int(value) for name, value in given.items()}


def effort_refused(name: str, kind: str) -> ValueError:
    """The error for a search-effort setting the index has no use for."""
    needs = "an IVF index" if name == "nprobe" else "an HNSW index"
    flag = "--" + name.replace("_", "-")  # the command line's name beside Python's
    return ValueError(f"{name} ({flag}) applies to {needs}, not to the {kind}")


_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_FIELDS = ("id", "vector")


def is_filter_field(name: Any) -> bool:
    """A document field the index can store for filtering: an identifier, not the index's own ``id`` or
    ``vector``."""
    return isinstance(name, str) and bool(_FIELD.match(name)) and name not in RESERVED_FIELDS


def check_filter_fields(fields: Iterable[str]) -> list[str]:
    """The fields an index build stores for filtering, as a sorted set (``"*"``: every scalar field); a name
    that ``search(filter=...)`` could not use is refused before anything is encoded."""
    fields = sorted(set(fields))
    for name in fields:
        if name != "*" and not is_filter_field(name):
            raise ValueError(f"filter field {name!r} must be an identifier other than {RESERVED_FIELDS} (the index's "
                             "own); a corpus id is kept with each document and returned in a hit's metadata")
    return fields


def check_filter(filter: Mapping[str, Any] | None) -> dict[str, list[Any]] | None:
    """Normalise a filter to ``{field: [allowed values]}``; field names must be identifiers. An empty mapping has
    no condition, so it is no filter (None); a field given no value (an empty list) could match nothing, and is
    refused as a mistake."""
    if filter is None:
        return None
    if not isinstance(filter, Mapping):
        raise FilterError(f"filter must be a mapping {{field: value or [values]}}, got {type(filter).__name__}")
    out = {}
    for field, value in filter.items():
        if not is_filter_field(field):
            raise FilterError(f"filter field {field!r} must be an identifier other than {RESERVED_FIELDS}")
        values = list(value) if isinstance(value, list | tuple | set) else [value]
        if not values:
            raise FilterError(f"filter field {field!r} is given no value (an empty list): give one or more values")
        for v in values:
            if not isinstance(v, str | int | float | bool):
                raise FilterError(f"filter value for {field!r} must be str, int, float or bool, got {v!r}")
            if isinstance(v, float) and not math.isfinite(v):  # NaN equals nothing, and no index stores inf
                raise FilterError(f"filter value for {field!r} must be a finite number, got {v!r}")
            if isinstance(v, int) and not -(2**63) <= v < 2**63:  # no index stores one (see build.filterable)
                raise FilterError(f"filter value for {field!r} is outside the 64-bit integer range: {v}")
        out[field] = values
    return out or None


def value_key(value: Any) -> Any:
    """A stored or filter value as filters compare it, as JSON has it: a bool equals only a bool (Python takes True
    for 1 and False for 0), a number a number of the same value (1 and 1.0), a string the same text. Equal keys hash
    alike, so a map of values can be keyed by it."""
    return (bool, value) if isinstance(value, bool) else value


def matches(metadata: Mapping[str, Any], filter: dict[str, list[Any]]) -> bool:
    """Whether a document's metadata pass a filter from ``check_filter``, values compared by ``value_key``."""
    return all(any(value_key(metadata.get(field)) == value_key(v) for v in values) for field, values in filter.items())


def pad_results(rows: list[list[tuple[float, int]]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists of (score, id) per query -> (scores, ids) arrays of shape (n, k), padded with -inf / -1, exact ties
    ordered by id."""
    scores = np.full((len(rows), k), PAD_SCORE, dtype=np.float32)
    ids = np.full((len(rows), k), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        for j, (score, id_) in enumerate(row[:k]):
            scores[i, j] = score
            ids[i, j] = id_
    order_ties(scores, ids)
    return scores, ids


def order_ties(scores: np.ndarray, ids: np.ndarray) -> None:
    """Put hits of exactly equal score in id order, in place, so that every backend gives one order; nothing else
    moves (a run of equal scores keeps its place in the row)."""
    for row_scores, row_ids in zip(scores, ids, strict=True):
        same = row_scores[1:] == row_scores[:-1]
        if not same.any():
            continue
        runs = np.concatenate([[0], np.cumsum(~same)])  # one number per run of equal scores, in row order
        order = np.lexsort((row_ids, runs))
        row_scores[:] = row_scores[order]
        row_ids[:] = row_ids[order]


def is_milvus_uri(uri_or_path: str | Path) -> bool:
    text = str(uri_or_path)
    return text.startswith(MILVUS_SCHEMES) or text.endswith(".db") or text.endswith(".milvus.json")


class IndexFileBehindWarning(UserWarning):
    """An index directory's FAISS file read alone lacks adds or deletes its journals hold (``Retriever.load`` reads
    them; ``Retriever.save`` writes them into the file)."""


def behind_checkpoint(meta: Mapping[str, Any]) -> tuple[int, int]:
    """The rows added and the ids deleted that an index directory's meta.json commits beyond what its FAISS file, a
    checkpoint, holds (``index_rows``, ``index_deleted``; a meta.json without them has the file saved with every
    change, so nothing is behind)."""
    count, deleted = int(meta["count"]), int(meta.get("deleted", 0))
    return count - int(meta.get("index_rows", count)), deleted - int(meta.get("index_deleted", deleted))


def warn_if_behind(path: Path) -> None:
    """Warn where ``path`` is the FAISS file of an index directory whose meta.json commits adds or deletes that the
    file, a checkpoint, does not hold yet: read alone it would silently miss them."""
    import json
    import warnings

    try:
        behind = behind_checkpoint(json.loads((path.parent / "meta.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # not an index directory's file
        return
    if path.name == "index.faiss" and (behind[0] > 0 or behind[1] > 0):
        warnings.warn(f"{path} lacks {behind[0]} added and {behind[1]} deleted document(s) that {path.parent} holds "
                      "in its journals: open the folder with Retriever.load, or call its save() first",
                      IndexFileBehindWarning, stacklevel=3)


def open_index(uri_or_path: str | Path, dim: int | None = None, factory: str = "Flat", **kwargs: Any) -> VectorIndex:
    """Open an existing index or create an empty one, picking the backend from the URI or path.

    * ``http://host:19530`` (or another Milvus URI), a ``*.db`` path (Milvus Lite) or a saved
      ``*.milvus.json`` descriptor -> :class:`MilvusIndex`;
    * anything else is a FAISS file: loaded when it exists, otherwise a new ``factory`` index of ``dim``
      that ``save()`` writes to that path.

    ``dim`` is required to create an index and checked against an existing one.
    """
    from llm_embedder.index.faiss_index import FaissIndex

    if is_milvus_uri(uri_or_path):
        from llm_embedder.index.milvus_index import MilvusIndex

        if str(uri_or_path).endswith(".milvus.json"):
            index: VectorIndex = MilvusIndex.load(uri_or_path)
        else:
            index = MilvusIndex(uri_or_path, dim, factory=factory, **kwargs)
    else:
        path = Path(uri_or_path)
        if path.is_dir():
            raise ValueError(f"{path} is a directory; pass the index file (e.g. {path / 'index.faiss'})")
        if path.exists():
            index = FaissIndex.load(path)
            warn_if_behind(path)
        else:
            if dim is None:
                raise ValueError(f"{path} does not exist; pass dim to create a new index")
            index = FaissIndex(dim, factory, path=path, **kwargs)
    if dim is not None and index.dim != dim:
        index.close()
        raise ValueError(f"index {uri_or_path} has dimension {index.dim}, expected {dim}")
    return index
