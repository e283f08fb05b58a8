"""Milvus backend: the same ``VectorIndex`` calls on Milvus Lite (a ``*.db`` path) or a cluster (a URI).

Milvus persists every insert and delete itself; ``save(path)`` writes a small JSON descriptor (URI,
collection, dim) atomically, and ``load(descriptor)`` reconnects. A Lite database inside the descriptor's
folder is stored relative to it, so an index folder can be moved. Metadata keys become dynamic fields,
so filters run inside Milvus. Requires the ``milvus`` extra (``pip install 'llm-embedder[milvus]'``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.index.base import (
    MILVUS_SCHEMES,
    EmptyIndexError,
    IndexFormatError,
    IndexUnavailableError,
    KLimitError,
    check_effort,
    check_filter,
    check_ids,
    check_k,
    check_metadata,
    check_vectors,
    effort_refused,
    matches,
    pad_results,
)
from llm_embedder.io import atomic_write

# Milvus Lite serves each database from one server per process, which holds the database's folder locked until
# it is released: the open MilvusIndex objects per database, so that the last one to close releases it
_LITE_OPEN: dict[str, int] = {}
_LITE_LOCK = threading.Lock()
MAX_LIMIT = 16384  # a Milvus server caps topk, and offset + limit (so paging cannot pass it); Lite does not
BATCH = 1000  # rows per insert / ids per lookup
DEFAULT_COLLECTION = "llm_embedder"
# the loggers that print a traceback for a failure they also raise: pymilvus's RPC error log, its "Connection
# recovery failed" (a server gone), milvus-lite's "Failed to start MilvusLite server" (a database another process holds)
QUIET_LOGGERS = ("pymilvus.decorators", "pymilvus.client.connection_manager", "milvus_lite.server_manager")
CONNECT_FAILED = 2  # pymilvus's Status.CONNECT_FAILED: the code of its error for a server it cannot reach
MILVUS_FORMS = "Flat, HNSW<M>, HNSW<M>,Flat, HNSW<M>,SQ8, IVF<nlist>,Flat, IVF<nlist>,SQ8"


class MilvusUnavailableError(IndexUnavailableError):
    """Milvus cannot be reached at a URI, or a Milvus Lite database is held by another process."""


_reporting = threading.local()


class _DropReported(logging.Filter):
    """Drops a record logged (with a traceback) for a Milvus failure that ``reported()`` turns into one line of
    its own, keeping the failure for the message; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        caught = getattr(_reporting, "caught", None)
        if caught is None:
            return True
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        if error is None or not _is_milvus_error(error):
            return True
        caught.append(error)
        return False


def _unreachable(error: BaseException) -> bool:
    """Whether a pymilvus error says the server could not be reached (pymilvus's connect-failed code, or gRPC's
    UNAVAILABLE under it), not that it refused the request."""
    seen: set[int] = set()  # an error's context chain can loop back on itself
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "MilvusUnavailableException":
            return True
        code = getattr(current, "code", None)
        if isinstance(code, int) and not isinstance(code, bool) and code == CONNECT_FAILED:
            return True
        if type(current).__module__.startswith("grpc") and callable(code):  # a grpc.RpcError: code() is its status
            if getattr(code(), "name", None) == "UNAVAILABLE":
                return True
        current = current.__cause__ or current.__context__
    return False


def _is_milvus_error(error: BaseException) -> bool:
    module = type(error).__module__
    return module.startswith(("pymilvus", "milvus_lite"))


_FILTER = _DropReported()


@contextmanager
def reported() -> Iterator[list[BaseException]]:
    """While a Milvus call runs whose failure is raised again as one line: the loggers' records of that failure
    are dropped (and collected in the list given) instead of printing a traceback on stderr."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    outer = getattr(_reporting, "caught", None)
    _reporting.caught = caught = []
    try:
        yield caught
    finally:
        _reporting.caught = outer


def one_line(message: Any) -> str:
    """A Milvus error message on one line: the parser's expression and caret lines joined, the carets left out."""
    lines = [line.strip() for line in str(message).splitlines()]
    return "; ".join(line for line in lines if line and set(line) != {"^"})


def _milvus():
    from llm_embedder.extras import require_extra

    require_extra("milvus", "the Milvus backend", ("pymilvus",))  # a Milvus server needs no milvus-lite
    from pymilvus import DataType, MilvusClient, MilvusException
    return MilvusClient, DataType, MilvusException


def milvus_string(text: str) -> str:
    r"""``text`` as a Milvus expression string literal. Milvus's parser knows the escapes ``\\ \" \n \r \t`` only
    (not JSON's ``\uXXXX``, ``\b`` or ``\f``) and takes every other character as it is, non-ASCII ones included;
    a raw line break would end the literal, so it is escaped."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def milvus_literal(value: str | int | float | bool) -> str:
    """A filter value as a Milvus expression literal."""
    if isinstance(value, str):
        return milvus_string(value)
    return json.dumps(value)  # true / false, an integer, a float


def milvus_field(field: str) -> str:
    """A metadata field in a Milvus expression. Metadata are dynamic fields: ``$meta["name"]`` names one whatever
    it is called, where a bare name that is a keyword of the expression language (``in``, ``and``, ``like``...)
    breaks the expression."""
    return f"$meta[{milvus_string(field)}]"


def milvus_condition(field: str, values: Sequence[Any]) -> str:
    """A filter expression matching any of ``values``: equalities joined by ``or`` (Milvus takes ``in`` after a
    bare field name only, not after ``$meta[...]``, and with values of one type only)."""
    name = milvus_field(field)
    terms = [f"{name} == {milvus_literal(v)}" for v in values]
    return terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")"


def is_lite(uri: str | Path) -> bool:
    """A Milvus Lite database (a file path), not a server URI."""
    return not str(uri).startswith(MILVUS_SCHEMES)


def search_limit(k: int, count: int, lite: bool) -> int:
    """The hits to ask Milvus for when ``k`` is above MAX_LIMIT (the only ``k`` that needs the index's count): all
    ``k``, no more than the index holds (Milvus Lite sets aside room for every hit asked for). A Milvus server
    returns at most MAX_LIMIT, so a larger ``k`` on an index holding more is refused (``KLimitError``), not padded as
    if no more matched; Milvus Lite returns all ``k``, as FAISS does."""
    if not lite and k > MAX_LIMIT and count > MAX_LIMIT:
        raise KLimitError(f"k={k}: a Milvus server returns at most {MAX_LIMIT} hits per query and the index holds "
                          f"{count} vectors; ask for k <= {MAX_LIMIT}")
    return min(k, count)


def _index_params(factory: str, lite: bool = True) -> tuple[str, dict]:
    """Map a FAISS factory string to the Milvus index that builds the same structure; a factory Milvus has no
    such index for is refused (naming what it accepts) rather than built as another kind or with parts left out.

    ``Flat`` -> FLAT, ``HNSW<M>`` / ``HNSW<M>,Flat`` -> HNSW, ``HNSW<M>,SQ8`` -> HNSW_SQ, ``IVF<nlist>,Flat`` ->
    IVF_FLAT, ``IVF<nlist>,SQ8`` -> IVF_SQ8, and on a Milvus server (not Lite, which does not build it)
    ``IVF<nlist>,PQ<m>[x<nbits>]`` -> IVF_PQ."""
    text = factory.strip() if isinstance(factory, str) else ""
    if text == "Flat":
        return "FLAT", {}
    if m := re.fullmatch(r"HNSW(\d+)(,Flat|,SQ8)?", text):
        degree = int(m.group(1))
        if not 2 <= degree <= 2048:
            raise ValueError(f"Milvus HNSW takes M from 2 to 2048, got {degree} ({factory!r})")
        params = {"M": degree, "efConstruction": 200}
        return ("HNSW_SQ", {**params, "sq_type": "SQ8"}) if m.group(2) == ",SQ8" else ("HNSW", params)
    if m := re.fullmatch(r"IVF(\d+),(Flat|SQ8|PQ(\d+)(?:x(\d+))?)", text):
        nlist = int(m.group(1))
        if not 1 <= nlist <= 65536:
            raise ValueError(f"Milvus IVF takes nlist from 1 to 65536, got {nlist} ({factory!r})")
        if m.group(2) == "Flat":
            return "IVF_FLAT", {"nlist": nlist}
        if m.group(2) == "SQ8":
            return "IVF_SQ8", {"nlist": nlist}
        if lite:
            raise ValueError(f"Milvus Lite does not build IVF_PQ ({factory!r}); it takes the factories {MILVUS_FORMS}"
                             " (a Milvus server also IVF<nlist>,PQ<m>[x<nbits>])")
        nbits = int(m.group(4) or 8)
        if not 1 <= nbits <= 16:
            raise ValueError(f"Milvus IVF_PQ takes nbits from 1 to 16, got {nbits} ({factory!r})")
        return "IVF_PQ", {"nlist": nlist, "m": int(m.group(3)), "nbits": nbits}
    server = "" if lite else ", IVF<nlist>,PQ<m>[x<nbits>]"
    raise ValueError(f"the Milvus backend has no index for the factory {factory!r}; it takes {MILVUS_FORMS}{server} "
                     "(M, nlist, m, nbits: numbers, e.g. HNSW32 or IVF1024,Flat)")


def check_milvus_factory(factory: str, dim: int, lite: bool = True) -> None:
    """Refuse a factory the Milvus backend cannot build for vectors of ``dim`` (before anything is encoded)."""
    index_type, params = _index_params(factory, lite)
    if index_type == "IVF_PQ" and dim % params["m"]:
        raise ValueError(f"Milvus IVF_PQ needs m to divide the dimension {dim}, got m={params['m']} ({factory!r})")


def _search_params(index_type: str, effort: dict[str, int], limit: int, kind: str) -> dict:
    """Milvus search parameters: inner product, and the search effort given (IVF nprobe; HNSW ef, at least the
    hits asked for, as FAISS takes it); Milvus's own defaults otherwise."""
    params: dict[str, int] = {}
    if "nprobe" in effort:
        if not index_type.startswith("IVF"):
            raise effort_refused("nprobe", kind)
        params["nprobe"] = effort["nprobe"]
    if "ef_search" in effort:
        if not index_type.startswith("HNSW"):  # HNSW or HNSW_SQ
            raise effort_refused("ef_search", kind)
        params["ef"] = max(effort["ef_search"], limit)
    return {"metric_type": "IP", **({"params": params} if params else {})}


class MilvusIndex:
    """A Milvus collection behind the ``VectorIndex`` contract (see ``llm_embedder.index.base``)."""

    backend = "milvus"
    # no search of several requests together (see FaissIndex.shared_search): a row's scores depend, at float
    # rounding, on the other rows of its search (a document and its duplicate came in either order)
    shared_search = None

    def __init__(
        self, uri: str | Path, dim: int | None = None, *, collection: str = DEFAULT_COLLECTION,
        factory: str = "Flat", token: str = "",
    ) -> None:
        MilvusClient, DataType, MilvusException = _milvus()
        self._error = MilvusException
        self.uri = str(uri)
        self.collection = collection
        self.factory = factory
        if is_lite(self.uri):
            Path(self.uri).parent.mkdir(parents=True, exist_ok=True)
        self.client = self._connect(MilvusClient, token)
        self._lite_path = os.path.abspath(self.uri) if is_lite(self.uri) else None  # as milvus-lite keys it
        if self._lite_path is not None:
            with _LITE_LOCK:
                _LITE_OPEN[self._lite_path] = _LITE_OPEN.get(self._lite_path, 0) + 1
        if self._call(self.client.has_collection, collection):
            fields = self._call(self.client.describe_collection, collection)["fields"]
            vector = next((f for f in fields if f["name"] == "vector"), None)
            if vector is None:
                raise IndexFormatError(f"{self.uri}: collection {collection!r} has no 'vector' field")
            self._dim = int(vector["params"]["dim"])
            if dim is not None and dim != self._dim:
                raise ValueError(f"Milvus collection {collection!r} has dimension {self._dim}, expected {dim}")
            # a collection reopened by a new process (a new Milvus Lite server) is released: nothing answers
            # a query or search until it is loaded; loading one already loaded does nothing
            self._call(self.client.load_collection, collection)
        else:
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"a new Milvus collection needs a positive integer dim, got {dim!r}")
            self._dim = dim
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
            index_type, build = _index_params(factory, is_lite(self.uri))
            params = self.client.prepare_index_params()
            params.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=build)
            self._call(self.client.create_collection, collection, schema=schema, index_params=params)

    def _connect(self, client_class: Callable[..., Any], token: str) -> Any:
        """A client for ``self.uri``; a server that does not answer (pymilvus waits 10 s for one) or a Lite
        database that another process holds is a ``MilvusUnavailableError`` of one line."""
        with reported() as caught:
            try:
                return client_class(self.uri, token=token) if token else client_class(self.uri)
            except self._error as err:
                cause = next((e for e in caught if type(e).__name__ == "DataDirLockedError"), None)
                if cause is not None:
                    raise MilvusUnavailableError(
                        f"Milvus Lite: the DB {self.uri} is in use by another process (a running serve?); stop it "
                        "or use another index") from None
                if is_lite(self.uri):
                    why = "; ".join(one_line(e) for e in caught) or one_line(getattr(err, "message", err))
                    raise MilvusUnavailableError(f"Milvus Lite cannot open the DB {self.uri} ({why})") from None
                raise MilvusUnavailableError(
                    f"cannot reach Milvus at {self.uri} ({one_line(getattr(err, 'message', err))}); is the server "
                    "running, and the URI right?") from None

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a client call; a Milvus failure is a ValueError of one line (pymilvus's traceback log dropped), a
        ``MilvusUnavailableError`` where the server no longer answers (stopped, or the network down), which a caller
        may retry later: the server answers it 503, not 400 as for a request Milvus refuses."""
        with reported():
            try:
                return fn(*args, **kwargs)
            except self._error as err:
                message = f"Milvus ({self.uri}): {one_line(getattr(err, 'message', err))}"
                if _unreachable(err):
                    raise MilvusUnavailableError(message) from None
                raise ValueError(message) from None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def count(self) -> int:
        rows = self._call(self.client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __len__(self) -> int:
        return self.count

    def held(self, ids: Sequence[int] | np.ndarray) -> list[int]:
        """Which of ``ids`` the index holds, sorted."""
        ids = np.asarray(ids, dtype=np.int64)
        found: list[int] = []
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH].tolist()
            rows = self._call(self.client.query, self.collection, filter=f"id in {chunk}", output_fields=["id"])
            found.extend(int(r["id"]) for r in rows)
        return sorted(found)

    def held_from(self, start: int) -> list[int]:
        """The ids the index holds from ``start`` on, sorted (vectors past an index directory's documents)."""
        where = f"id >= {int(start)}"
        rows = self._call(self.client.query, self.collection, filter=where, output_fields=["count(*)"])
        total = int(rows[0]["count(*)"])
        if total == 0:  # nearly always
            return []
        if total <= MAX_LIMIT:  # a query returns up to MAX_LIMIT rows
            rows = self._call(self.client.query, self.collection, filter=where, output_fields=["id"], limit=total)
            return sorted(int(r["id"]) for r in rows)
        iterator = self._call(self.client.query_iterator, self.collection, batch_size=BATCH, filter=where,
                              output_fields=["id"])
        found: list[int] = []
        try:
            while rows := self._call(iterator.next):
                found.extend(int(r["id"]) for r in rows)
        finally:
            iterator.close()
        return sorted(found)

    def add(self, ids: Sequence[int], vectors: np.ndarray, metadata: list[dict] | None = None) -> None:
        """Insert vectors under caller ids; duplicates (in the batch or the collection) are refused first."""
        array = check_vectors(vectors, self.dim)
        id_array = check_ids(ids, len(array))
        records = check_metadata(metadata, len(array))
        if not len(array):
            return
        for i, record in enumerate(records or []):
            bad = [key for key in record if key in ("id", "vector")]
            if bad:
                raise ValueError(f"metadata[{i}] uses reserved field(s) {bad}")
        existing = self.held(id_array)
        if existing:
            raise ValueError(f"ids already in the index: {existing[:10]}")
        for start in range(0, len(array), BATCH):
            rows = []
            for j in range(start, min(start + BATCH, len(array))):
                row = dict(records[j]) if records else {}
                row["id"] = int(id_array[j])
                row["vector"] = array[j].tolist()
                rows.append(row)
            self._call(self.client.insert, self.collection, rows)

    def delete(self, ids: Sequence[int]) -> int:
        """Remove ids (unknown ids are ignored); returns how many were removed."""
        id_array = np.unique(np.asarray(ids, dtype=np.int64))
        if not id_array.size:
            return 0
        present = self.held(id_array)
        if present:
            self._call(self.client.delete, self.collection, ids=present)
        return len(present)

    def search(
        self, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None = None, *, nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids), shape (n, k), padded with -inf / -1 when fewer than k items match; ``nprobe``
        (IVF) and ``ef_search`` (HNSW) set the search effort (Milvus's defaults otherwise)."""
        queries = check_vectors(vectors, self.dim, "query vectors")
        k = check_k(k)
        conditions = check_filter(filter)
        effort = check_effort(nprobe, ef_search)
        index_type, kind = self._index_type(), f"Milvus index {self.factory!r}"
        _search_params(index_type, effort, 1, kind)  # a setting the index has no use for: refused first
        lite = is_lite(self.uri)
        # no count(*) query per search (it can cost more than the search): Milvus returns what the index holds up
        # to the limit asked, so only a k above MAX_LIMIT needs the count first (a server's cap; Lite sets aside
        # room for every hit asked for), and an answer without a single hit tells an empty index from a filter
        # that matched nothing by a count then. A count can be stale (another process adding): a row that fills
        # its limit and is still short of k searches again, wider, rather than being padded as if no more matched
        count = self.count if k > MAX_LIMIT else None
        if count == 0:
            raise EmptyIndexError("the index is empty: add vectors before searching")
        limit = k if count is None else search_limit(k, count, lite)
        ceiling = None if lite else MAX_LIMIT
        expr = ""
        if conditions:
            expr = " and ".join(milvus_condition(field, values) for field, values in conditions.items())
        # Milvus Lite compares a JSON field's true with 1 and false with 0 as equal (a Milvus server reads each as its
        # own type): where a filter holds a bool or a number, each hit's fields are checked by base.matches, and a
        # query left short of k by the hits dropped searches again for more
        strict = conditions if conditions and any(not isinstance(v, str) for vs in conditions.values() for v in vs) \
            else None
        fields = ["id", *sorted(strict or ())]
        rows: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
        pending = list(range(len(queries)))
        found = False  # any hit at all: the index is not empty
        while pending:
            result = self._call(
                self.client.search, self.collection, data=queries[pending].tolist(), limit=limit, filter=expr,
                output_fields=fields, search_params=_search_params(index_type, effort, limit, kind),
            )
            short = []
            for i, hits in zip(pending, result, strict=True):
                found = found or len(hits) > 0
                rows[i] = [(float(hit["distance"]), int(hit["id"])) for hit in hits
                           if strict is None or matches(hit["entity"], strict)]
                if len(rows[i]) < k and len(hits) == limit:  # hits dropped, or a stale count: more may match
                    short.append(i)
            wider = limit * 4 if strict else min(limit * 4, k)  # a row keeps at most k of what it finds
            if ceiling is not None:
                wider = min(wider, ceiling)
                if short and wider == limit and k > limit:  # at the server's cap: refused if the index holds more
                    search_limit(k, self.count, lite)
            pending, limit = (short, wider) if wider > limit else ([], limit)
        if not found and self.count == 0:  # no hit: an empty index, or a filter that matched nothing
            raise EmptyIndexError("the index is empty: add vectors before searching")
        return pad_results(rows, k)

    def _index_type(self) -> str:
        """The Milvus index type of this collection's factory; AUTOINDEX for a factory this version no longer takes
        (an index built by an earlier one, which built AUTOINDEX for it), so that it stays searchable."""
        try:
            return _index_params(self.factory, is_lite(self.uri))[0]
        except ValueError:
            return "AUTOINDEX"

    def save(self, path: str | Path | None = None) -> Path:
        """Write a JSON descriptor (``*.milvus.json``) that ``load`` reconnects from; data is already durable."""
        if path is None:
            raise ValueError("pass the descriptor path, e.g. DIR/index.milvus.json")
        path = Path(path)
        uri = self.uri
        if is_lite(uri):
            db = Path(uri).resolve()
            if db.parent == path.parent.resolve():
                uri = db.name
        descriptor = {"backend": "milvus", "uri": uri, "collection": self.collection, "dim": self.dim,
                      "factory": self.factory}
        with atomic_write(path) as handle:
            json.dump(descriptor, handle, indent=2)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MilvusIndex:
        """Reconnect from a descriptor written by ``save``; a corrupt descriptor or missing DB is an error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Milvus index descriptor not found: {path}")
        try:
            descriptor = json.loads(path.read_text(encoding="utf-8"))
            uri, collection, dim = descriptor["uri"], descriptor["collection"], int(descriptor["dim"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: corrupt Milvus index descriptor: {err}") from None
        if is_lite(uri):
            db = Path(uri) if Path(uri).is_absolute() else path.parent / uri
            if not db.exists():
                raise IndexFormatError(f"{path}: the Milvus Lite database {db} is missing")
            uri = str(db)
        index = cls(uri, None, collection=collection, factory=descriptor.get("factory", "Flat"))
        if index.dim != dim:
            index.close()
            raise IndexFormatError(f"{path}: descriptor says dim {dim}, collection has {index.dim}")
        return index

    def close(self) -> None:
        """Close the client connection; the last one open on a Milvus Lite database in this process also stops its
        server, which releases the database's folder for another process (a ``serve``, the next writer)."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing twice or a dead server must not mask the real error
            pass
        path, self._lite_path = getattr(self, "_lite_path", None), None
        if path is None:
            return
        with _LITE_LOCK:
            _LITE_OPEN[path] -= 1
            last = _LITE_OPEN[path] == 0
            if last:
                del _LITE_OPEN[path]
        if last:
            try:
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)
            except Exception:  # noqa: BLE001 - an older milvus-lite: the folder is released at exit, as before
                pass

    def __repr__(self) -> str:
        return f"MilvusIndex(uri={self.uri!r}, collection={self.collection!r}, dim={self.dim})"
