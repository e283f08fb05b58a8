"""FAISS in-process index: any factory string, inner product on normalised vectors, atomic saves.

Caller ids: an IVF index (``IVFx,Flat``, ``IVFx,SQ8``, ``IVFx,PQy``, also behind a PCA or OPQ pre-transform)
stores them itself, in its inverted lists; any other index is wrapped in ``IndexIDMap2``. An IVF must not be wrapped:
``IndexIDMap::remove_ids`` compacts its id map as if the inner index renumbered its vectors 0..n-1 after a delete, as
Flat does, but IVF keeps its own ids, so every search after a delete returned shifted ids. An index file written
before (IVF in ``IndexIDMap2``) is converted when loaded if it never had a delete; one that had is searched as it
was, and refuses ``add`` and ``delete`` (rebuild it). ``delete`` works where the index supports removal (Flat, SQ,
IVF*; not HNSW). Metadata for filtering lives in a ``<path>.meta.json`` sidecar, written only when there is
metadata. Saving writes temporary files in the target folder and renames them over the old ones (``os.replace``), so
a crash mid-save leaves the previous index readable.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from llm_embedder.index.base import (
    PAD_ID,
    PAD_SCORE,
    EmptyIndexError,
    IndexFormatError,
    check_effort,
    check_filter,
    check_ids,
    check_k,
    check_metadata,
    check_vectors,
    effort_refused,
    order_ties,
    value_key,
)
from llm_embedder.io import current_umask

DEFAULT_NPROBE = 16
# HNSW defaults picked with benchmarks/bench_search.py (clustered 384-d vectors, see benchmarks/README.md):
# efConstruction 80 instead of FAISS's 40 lifts recall@10 at efSearch 32 from 0.95 to 0.999 at 100k (M=32) for
# ~2x build time; at 1M (HNSW32, efC 80) efSearch 64 gives recall@10 0.91 and 128 gives 0.96 at 93x the
# single-query speed of exact search, so 128 is the default (raise it further for more recall).
DEFAULT_EF_SEARCH = 128
DEFAULT_EF_CONSTRUCTION = 80
# the FAISS classes whose top k are the first k of a search with a larger k (see FaissIndex.shared_search): exact types,
# a subclass (IndexIVFFastScan of IndexIVF, IndexIVFPQR of IndexIVFPQ) may search otherwise
_NESTED_TOP_K = (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2, faiss.IndexScalarQuantizer, faiss.IndexPQ,
                 faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer, faiss.IndexIVFPQ)


def _ids_checksum(ids: np.ndarray) -> str:
    """A cheap fingerprint of the id set, stored in the sidecar to detect an index/sidecar mismatch."""
    ids = np.sort(ids.astype(np.int64))
    mixed = int(np.bitwise_xor.reduce(ids * 2654435761)) if len(ids) else 0
    return f"{len(ids)}:{int(ids.sum()) & 0xFFFFFFFFFFFF}:{mixed}"


def faiss_reason(err: Exception) -> str:
    """FAISS's own words from one of its C++ errors, without the function signature, source file and line before
    them ("Error in std::unique_ptr<faiss::Index> faiss::...(int, ...) at .../index_factory.cpp:1228: ...")."""
    text = str(err).strip().splitlines()[-1].strip()
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    return re.sub(r"^Error: '.*?' failed: ", "", text)


class FaissIndex:
    """A FAISS index behind the ``VectorIndex`` contract (see ``llm_embedder.index.base``)."""

    backend = "faiss"

    def __init__(self, dim: int, factory: str = "Flat", *, path: str | Path | None = None) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        try:
            inner = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ValueError(f"invalid FAISS factory string {factory!r}: {faiss_reason(err)}") from None
        self.factory = factory
        self.path = Path(path) if path is not None else None
        self.index = inner if "IDMap" in factory or _native_ivf(inner) else faiss.IndexIDMap2(inner)
        self.metadata: dict[int, dict] = {}
        self._postings: dict[str, dict[Any, list[int]]] = {}
        self._max_id = -1
        self._ids_cache: np.ndarray | None = None
        self._stale: str | None = None
        self._holder: Any = None
        self._adopt()  # an explicit "IDMap,IVF..." factory: its IVF holds the ids too
        hnsw = getattr(self._inner(), "hnsw", None)
        if hnsw is not None:  # only matters while adding, so it is set on new indexes only
            hnsw.efConstruction = max(hnsw.efConstruction, DEFAULT_EF_CONSTRUCTION)
        self._tune()

    # -- properties -------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.count

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def ids(self) -> np.ndarray:
        """All ids in the index (int64): an id map's, an IVF's inverted lists' (read once per change, kept)."""
        if hasattr(self.index, "id_map"):
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is None:
            return np.arange(self.count, dtype=np.int64)
        if self._ids_cache is None:
            self._ids_cache = _list_ids(ivf)
            self._ids_cache.flags.writeable = False  # shared by every caller until the next add or delete
        return self._ids_cache

    def held(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        """Which of ``ids`` the index holds, sorted."""
        return np.intersect1d(np.asarray(ids, dtype=np.int64), self.ids()).tolist()

    def held_from(self, start: int) -> list[int]:
        """The ids the index holds from ``start`` on, sorted (vectors past an index directory's documents)."""
        if self._max_id < start:  # an upper bound (a delete does not lower it): nothing to look at
            return []
        ids = self.ids()
        return np.sort(ids[ids >= start]).tolist()

    @property
    def replayable(self) -> bool:
        """Whether adding vectors in other batches gives the same index, bit for bit, so that an index directory may
        add its latest vectors again from its embeddings file instead of saving the index per add: Flat and SQ,
        which store each vector, or each component, alone. Not a graph (HNSW, NSG: a batch is linked among itself),
        nor a kind that computes a vector's code or list with a matrix product (IVF, PQ, PCA, OPQ): FAISS uses BLAS
        for a batch of 20 or more, and its rounding differs (1 vector in 200k went to another IVF list)."""
        return _replayable(self.index)

    @property
    def shared_search(self) -> str:
        """Which searches of several requests may be one search of their rows together (``Retriever.
        search_vectors_many``): a row's hits never depend on the other rows (beyond the rounding of a batched matrix
        product, which FAISS uses for 20 queries or more), so those of one filter and search effort may share a
        search: ``"any k"`` where the top k are the first k of a search of a larger k (searched with the largest,
        each row cut to its own): an exhaustive scan (Flat, SQ, PQ) or an IVF of one (the lists probed do not depend
        on k), behind pre-transforms or not; ``"same k"`` for any other kind: HNSW widens its candidate list to k
        (efSearch = max(ef_search, k)), a refine stage reranks k_factor * k candidates, fast-scan codes' result
        handlers depend on k, and other kinds are unchecked."""
        index = faiss.downcast_index(self._inner())
        while isinstance(index, faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        return "any k" if type(index) in _NESTED_TOP_K else "same k"

    @property
    def kind(self) -> str:
        """The index in words for messages: its factory string, or where that is unknown (an index file read
        without it) the FAISS class of the inner index, e.g. ``index IndexHNSWFlat``."""
        if self.factory != "?":
            return f"factory {self.factory!r}"
        return f"index {type(self._inner()).__name__}"

    def _inner(self):
        """The index behind an id map (an IVF, holding its ids itself, is not behind one)."""
        if isinstance(self.index, faiss.IndexIDMap | faiss.IndexIDMap2):
            return faiss.downcast_index(self.index.index)
        return self.index

    def _adopt(self) -> None:
        """Take an IVF out of the id map around it (an index file written before IVF held its ids, or an explicit
        ``IDMap`` factory): its lists' ids, the id map's positions, become the caller ids they map to. Where a
        delete has shifted the id map (the lists' ids are not 0..n-1), or the lists cannot be rewritten, the index
        stays as it is and ``_stale`` says why ``add`` and ``delete`` refuse."""
        if not isinstance(self.index, faiss.IndexIDMap | faiss.IndexIDMap2):
            return
        inner = faiss.downcast_index(self.index.index)
        if not _native_ivf(inner):
            return
        ivf = faiss.try_extract_index_ivf(inner)
        where = f"{self.path}" if self.path is not None else "this index"
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if not isinstance(lists, faiss.ArrayInvertedLists | faiss.BlockInvertedLists) or ivf.direct_map.type != 0:
            self._stale = (f"{where}: an IVF index in an id map whose lists cannot be rewritten to hold the ids; "
                           "rebuild the index to add or delete")
            return
        positions = _list_ids(ivf)
        id_map = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if len(positions) != len(id_map) or not np.array_equal(np.sort(positions), np.arange(len(id_map))):
            self._stale = (f"{where}: an IVF index saved by an older version after a delete, which shifted its ids "
                           "(searches may name other documents than those found); rebuild the index")
            return
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                pointer = lists.get_ids(list_no)
                view = faiss.rev_swig_ptr(pointer, size)  # the list's own memory: rewritten in place
                view[:] = id_map[view]
                lists.release_ids(list_no, pointer)
        # the map owns the IVF (its proxy from downcast_index cannot: SWIG finds no destructor for it, and its
        # type breaks for the rest of the process), so it is kept, emptied, and frees the IVF with this object
        holder = self.index
        holder.id_map.clear()
        holder.ntotal = 0
        if isinstance(holder, faiss.IndexIDMap2):
            holder.construct_rev_map()  # empties it
        self._holder = holder
        self.index = inner
        self._ids_cache = None

    def _tune(self) -> None:
        """Search-time defaults that keep ANN recall reasonable (IVF nprobe, HNSW efSearch)."""
        inner = self._inner()
        ivf = faiss.try_extract_index_ivf(inner)
        if ivf is not None:
            ivf.nprobe = min(ivf.nlist, max(ivf.nprobe, DEFAULT_NPROBE))
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(inner.hnsw.efSearch, DEFAULT_EF_SEARCH)

    def training_needs(self) -> list[tuple[int, str]] | None:
        """What training asks of the sample, as FAISS checks it: ``(fewest vectors, the part that needs them)`` for
        each part still to train (an IVF's lists, a PQ's centroids per sub-quantizer, OPQ's, a PCA's output
        dimensions); ``None`` where a part is of a kind not known here (its training says so itself)."""
        needs: list[tuple[int, str]] = []
        return needs if _training_needs(self.index, needs) else None

    # -- writing ----------------------------------------------------------------------------------
    def train(self, vectors: np.ndarray, *, copy: bool = True) -> None:
        """Train IVF/PQ quantisers on a sample; a factory that needs more points says how many.

        ``copy=False``: the caller gives the (float32, C-contiguous) sample up, it is normalised in place.
        """
        if self.is_trained:
            return
        sample = check_vectors(vectors, self.dim, "training vectors", copy=copy)
        try:
            self.index.train(sample)
        except RuntimeError as err:
            raise ValueError(
                f"FAISS factory {self.factory!r} could not be trained on {len(sample)} vectors "
                f"({faiss_reason(err)}); give more vectors or a smaller factory (e.g. Flat)"
            ) from None

    def add(
        self, ids: Sequence[int], vectors: np.ndarray, metadata: list[dict] | None = None, *, copy: bool = True
    ) -> None:
        """Add vectors under caller ids; all checks run before anything is written.

        ``copy=False``: the caller gives the (float32, C-contiguous) vectors up, they are normalised in place
        rather than copied (the index build adds big chunks this way, so no second buffer counts in RSS).
        """
        array = check_vectors(vectors, self.dim, copy=copy)
        id_array = check_ids(ids, len(array))
        records = check_metadata(metadata, len(array))
        if not len(array):
            return
        if self._stale:
            raise ValueError(f"cannot add: {self._stale}")
        if id_array.min() <= self._max_id:  # only non-increasing ids can collide
            existing = np.intersect1d(id_array, self.ids())
            if existing.size:
                raise ValueError(f"ids already in the index: {existing[:10].tolist()}")
        if not self.is_trained:
            self.train(array)
        self._ids_cache = None
        self.index.add_with_ids(array, id_array)
        self._max_id = max(self._max_id, int(id_array.max()))
        if records is not None:
            for id_, record in zip(id_array.tolist(), records, strict=True):
                if record:
                    self.metadata[id_] = record
                    for field, postings in list(self._postings.items()):
                        _post(postings, record.get(field), id_)

    def delete(self, ids: Sequence[int]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed."""
        id_array = np.unique(np.asarray(ids, dtype=np.int64))
        if not id_array.size:
            return 0
        if self._stale:
            raise ValueError(f"cannot delete: {self._stale}")
        self._ids_cache = None
        try:
            removed = int(self.index.remove_ids(faiss.IDSelectorBatch(id_array)))
        except RuntimeError:
            raise ValueError(f"the FAISS {self.kind} does not support delete; use Flat or IVF, or rebuild") from None
        for id_ in id_array.tolist():
            self.metadata.pop(id_, None)
        self._postings = {}  # built again by the next filtered search
        return removed

    # -- reading ----------------------------------------------------------------------------------
    def search(
        self, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None = None, *, nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), shape (n, k), padded with -inf / -1 when fewer than k items match.

        ``nprobe`` (IVF: lists searched, default 16) and ``ef_search`` (HNSW: candidates kept, default 128) trade
        speed for recall in this search only; an index without IVF or HNSW refuses them."""
        queries = check_vectors(vectors, self.dim, "query vectors")
        k = check_k(k)
        conditions = check_filter(filter)
        effort = check_effort(nprobe, ef_search)
        inner = self._inner()
        if "nprobe" in effort and faiss.try_extract_index_ivf(inner) is None:
            raise effort_refused("nprobe", f"FAISS {self.kind}")
        if "ef_search" in effort and not hasattr(inner, "hnsw"):
            raise effort_refused("ef_search", f"FAISS {self.kind}")
        if self.count == 0:
            raise EmptyIndexError("the index is empty: add vectors before searching")
        selector = None
        if conditions is not None:
            allowed = self._allowed_ids(conditions)
            if not allowed.size:
                return (np.full((len(queries), k), PAD_SCORE, np.float32), np.full((len(queries), k), PAD_ID, np.int64))
            selector = faiss.IDSelectorBatch(allowed)
        if self._stale:
            scores, ids = self._search_stale(queries, k, selector, allowed if selector is not None else None, effort)
        else:
            params = self._search_params(selector, **effort) if selector is not None or effort else None
            scores, ids = self.index.search(queries, k, params=params) if params else self.index.search(queries, k)
        scores = scores.astype(np.float32)
        ids = ids.astype(np.int64)
        scores[ids < 0] = PAD_SCORE
        order_ties(scores, ids)
        return scores, ids

    def _search_stale(
        self, queries: np.ndarray, k: int, selector: Any, allowed: np.ndarray | None, effort: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search an id-mapped IVF that ``_adopt`` left as it was: its inner index, mapping its ids through the id
        map here, as ``IndexIDMap`` would, but refusing an id past the map's end (which ``IndexIDMap`` reads out of
        bounds: the map shrank with a delete, the IVF's ids did not)."""
        id_map = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        if selector is not None:  # the caller ids allowed, as the positions in the map that hold them
            selector = faiss.IDSelectorBatch(np.flatnonzero(np.isin(id_map, allowed)).astype(np.int64))
        params = self._search_params(selector, **effort) if selector is not None or effort else None
        inner = self.index.index
        scores, positions = inner.search(queries, k, params=params) if params else inner.search(queries, k)
        if positions.max(initial=-1) >= len(id_map):
            raise IndexFormatError(self._stale)
        return scores, np.where(positions < 0, positions, id_map[np.maximum(positions, 0)])

    def _allowed_ids(self, conditions: dict[str, list[Any]]) -> np.ndarray:
        """The ids whose metadata match a filter (``base.matches``), sorted, from a map of each filtered field's
        values to their ids: built at the field's first filter, kept up to date by ``add``. A scan of every
        document's metadata per search took ~70 ms at 50k documents."""
        allowed: set[int] | None = None
        for field, values in conditions.items():
            postings = self._postings.get(field)
            if postings is None:
                postings = {}
                for id_, record in self.metadata.items():
                    _post(postings, record.get(field), id_)
                self._postings[field] = postings
            ids = {id_ for value in values for id_ in postings.get(value_key(value), ())}
            allowed = ids if allowed is None else allowed & ids
            if not allowed:
                break
        return np.array(sorted(allowed or ()), dtype=np.int64)

    def _search_params(self, selector, nprobe: int | None = None, ef_search: int | None = None):
        """Parameters of one search: a filter's ``selector`` (or None) and the search effort, the index's own
        where not given."""
        inner = self._inner()
        ivf = faiss.try_extract_index_ivf(inner)
        options = {"sel": selector} if selector is not None else {}
        if ivf is not None:
            return faiss.SearchParametersIVF(**options, nprobe=nprobe or ivf.nprobe)
        if hasattr(inner, "hnsw"):
            return faiss.SearchParametersHNSW(**options, efSearch=ef_search or inner.hnsw.efSearch)
        return faiss.SearchParameters(**options)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path | None = None) -> Path:
        """Write the index (and its metadata sidecar) atomically; returns the index path."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("no path: pass save(path) or create the index with path=")
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = Path(f"{path}.meta.json")
        temps: list[str] = []
        try:
            index_tmp = _temp_name(path)
            temps.append(index_tmp)
            faiss.write_index(self.index, index_tmp)
            _fsync(index_tmp)
            sidecar_tmp = None
            if self.metadata:
                sidecar_tmp = _temp_name(sidecar)
                temps.append(sidecar_tmp)
                payload = {
                    "factory": self.factory,
                    "ids_checksum": _ids_checksum(self.ids()),
                    "metadata": {str(k): v for k, v in self.metadata.items()},
                }
                with open(sidecar_tmp, "w", encoding="utf-8") as handle:  # dumps: json.dump's encoder is ~5x slower
                    handle.write(json.dumps(payload, ensure_ascii=False))
                _fsync(sidecar_tmp)
            if sidecar_tmp:
                os.replace(sidecar_tmp, sidecar)
            elif sidecar.exists():
                sidecar.unlink()
            os.replace(index_tmp, path)
        finally:
            for tmp in temps:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path, factory: str | None = None) -> FaissIndex:
        """Read an index written by ``save``; a missing, truncated or corrupt file is an IndexFormatError.

        ``factory``: the factory string it was built with, where the caller knows it (an index directory's
        meta.json); the sidecar, written only with metadata, records it too. Messages name it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"FAISS index file not found: {path}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise IndexFormatError(
                f"{path}: not a readable FAISS index (truncated or corrupt?): {faiss_reason(err)}"
            ) from None
        self = cls.__new__(cls)
        self.index = index
        self.path = path
        self.factory = factory or "?"
        self.metadata = {}
        self._postings = {}
        self._ids_cache = None
        self._stale = None
        self._holder = None
        self._adopt()  # an IVF written in an id map by an older version
        if self._stale:
            warnings.warn(self._stale, stacklevel=2)
        sidecar = Path(f"{path}.meta.json")
        if sidecar.exists():
            try:
                payload = json.loads(sidecar.read_text(encoding="utf-8"))
                self.factory = payload.get("factory", self.factory)
                self.metadata = {int(k): v for k, v in payload["metadata"].items()}
                checksum = payload["ids_checksum"]
            except (json.JSONDecodeError, KeyError, ValueError, AttributeError) as err:
                raise IndexFormatError(f"{sidecar}: corrupt metadata sidecar: {err}") from None
            if checksum != _ids_checksum(self.ids()):
                raise IndexFormatError(f"{sidecar}: metadata does not match the ids in {path}")
        ids = self.ids()
        self._max_id = int(ids.max()) if ids.size else -1
        self._tune()
        return self

    def close(self) -> None:
        """Nothing to release (kept for parity with the Milvus backend)."""

    def __repr__(self) -> str:
        return f"FaissIndex(dim={self.dim}, factory={self.factory!r}, count={self.count})"


def _training_needs(index: Any, needs: list[tuple[int, str]]) -> bool:
    """Append what ``index`` needs to train (see ``FaissIndex.training_needs``); False for an unknown part.
    (A downcast object does not own its index: the caller keeps ``index`` alive.)"""
    if index.is_trained:
        return True
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if transform.is_trained:
                continue
            if isinstance(transform, faiss.OPQMatrix):  # trains a PQ of 256 centroids per sub-quantizer
                needs.append((256, "OPQ (256 centroids per sub-quantizer)"))
            elif isinstance(transform, faiss.PCAMatrix):
                needs.append((int(transform.d_out), f"PCA to {transform.d_out} dimensions"))
            else:
                return False
        return _training_needs(index.index, needs)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return _training_needs(index.index, needs)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needs.append((int(ivf.nlist), f"IVF with {ivf.nlist} lists"))
        if not _training_needs(ivf.quantizer, needs):
            return False
    if isinstance(index, faiss.IndexHNSW):
        return _training_needs(index.storage, needs)
    pq = getattr(index, "pq", None)  # IndexPQ, IndexIVFPQ and their fast-scan kinds
    if isinstance(pq, faiss.ProductQuantizer):
        needs.append((int(pq.ksub), f"PQ with {pq.ksub} centroids per sub-quantizer"))
        return True
    if ivf is not None:
        return isinstance(index, faiss.IndexIVFFlat | faiss.IndexIVFScalarQuantizer)
    return isinstance(index, faiss.IndexScalarQuantizer | faiss.IndexFlat)


def _native_ivf(index: Any) -> bool:
    """Whether ``index`` is an IVF, or one behind pre-transforms (PCA, OPQ), which store caller ids themselves
    (``add_with_ids``, ``remove_ids`` and a search's selector work on them), so it needs no id map. Not an IVF inside
    anything else (``IndexRefine`` has no ``add_with_ids``)."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return isinstance(index, faiss.IndexIVF)


def _list_ids(ivf: Any) -> np.ndarray:
    """The ids an IVF's inverted lists hold, list by list (int64)."""
    lists = ivf.invlists
    parts = [np.empty(0, np.int64)]
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            pointer = lists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).astype(np.int64))  # a copy
            lists.release_ids(list_no, pointer)
    return np.concatenate(parts)


def _replayable(index: Any) -> bool:
    """See ``FaissIndex.replayable``: known kinds only, anything else is taken as batch-dependent."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return _replayable(index.index)
    return isinstance(index, faiss.IndexFlat | faiss.IndexScalarQuantizer)


def _temp_name(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600: the saved index gets the usual permissions
    return tmp


def _fsync(path: str) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _post(postings: dict[Any, list[int]], value: Any, id_: int) -> None:
    """File ``id_`` under ``value`` in a field's map of values to ids, keyed by ``value_key`` (1 and 1.0 under one
    key, True under its own: keyed by the value alone, True and 1 hash alike and a filter for one found the other). A
    filter value is a scalar, so a value no filter can equal (absent, a list) is left out."""
    if isinstance(value, str | int | float):
        postings.setdefault(value_key(value), []).append(id_)
