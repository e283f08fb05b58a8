"""``Retriever``: texts in, top-k documents with scores out, for any task (embedder + index + documents)."""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.embedder import text_list
from llm_embedder.index.base import (
    FilterError,
    IndexFormatError,
    VectorIndex,
    behind_checkpoint,
    check_effort,
    check_filter,
    check_k,
)
from llm_embedder.index.build import (
    DELETED_FILE,
    DOCS_FILE,
    EMBEDDINGS_FILE,
    FAISS_FILE,
    META_FILE,
    MILVUS_FILE,
    OFFSETS_FILE,
    READ_BLOCK,
    build_index,
    doc_line,
    filterable,
    instruction_hash,
    iter_records,
    key_max_length,
)
from llm_embedder.io import LOCK_FILE, RunInProgressError, atomic_write, blank_kind, exclusive
from llm_embedder.models import EMBEDDER_ALIASES, ModelChangedWarning, model_version

# An index directory's FAISS file is a checkpoint, written again once the rows added and ids deleted since the last
# one reach CHECKPOINT_ROWS and CHECKPOINT_SHARE of the documents: a checkpoint writes every vector, so spaced out in
# proportion to the index it costs an add O(its own size) on average, where a save per add cost O(index). Until
# then the embeddings file and the deletion journal hold them, and Retriever.load adds them to what the file holds.
CHECKPOINT_ROWS = 1024
CHECKPOINT_SHARE = 0.1
ID_BYTES = np.dtype(np.int64).itemsize


@dataclass
class Hit:
    """One retrieved document: its index id, similarity score, text and the rest of its record."""

    id: int
    score: float
    text: str
    metadata: dict = field(default_factory=dict)


class DocStore:
    """Documents by id: in memory, or docs.jsonl + an int64 offsets file (random access, flat memory)."""

    def __init__(self, directory: Path | None = None, count: int | None = None) -> None:
        """``count``: read only the first ``count`` documents of ``directory`` (those meta.json counts; rows past
        them are an add that did not finish)."""
        self.directory = directory
        self._docs: list[dict] = []
        self._offsets = np.zeros(0, dtype=np.int64)
        if directory is not None:
            self._offsets = _read_offsets(directory / OFFSETS_FILE)[:count]

    def __len__(self) -> int:
        return len(self._offsets) if self.directory is not None else len(self._docs)

    def get(self, ids: Iterable[int]) -> list[dict]:
        if self.directory is None:
            return [self._docs[i] for i in ids]
        out = []
        with (self.directory / DOCS_FILE).open("rb") as handle:
            for i in ids:
                handle.seek(int(self._offsets[i]))
                out.append(json.loads(handle.readline()))
        return out

    def lines(self, docs: list[dict]) -> list[bytes] | None:
        """The docs.jsonl lines of ``docs`` (None in memory), made before anything is written: a document JSON
        cannot store is refused, naming it, with the store unchanged."""
        if self.directory is None:
            return None
        return [doc_line(doc, f"documents[{i}]") for i, doc in enumerate(docs)]

    def append(self, docs: list[dict], lines: list[bytes] | None = None) -> None:
        """Add ``docs`` (their ``lines`` when already made) after the stored ones."""
        if self.directory is None:
            self._docs.extend(docs)
            return
        lines = self.lines(docs) if lines is None else lines
        path = self.directory / DOCS_FILE
        offset = path.stat().st_size
        new = []
        with path.open("ab") as handle:
            for line in lines:
                handle.write(line)
                new.append(offset)
                offset += len(line)
        with (self.directory / OFFSETS_FILE).open("ab") as handle:
            handle.write(np.asarray(new, dtype=np.int64).tobytes())
        self._offsets = _read_offsets(self.directory / OFFSETS_FILE)

    def end(self) -> int:
        """Where the documents end in docs.jsonl (bytes); 0 in memory."""
        if self.directory is None or not len(self._offsets):
            return 0
        with (self.directory / DOCS_FILE).open("rb") as handle:
            handle.seek(int(self._offsets[-1]))
            handle.readline()
            return handle.tell()

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` documents; in a directory docs.jsonl and docs.offsets are cut back to them."""
        if self.directory is None:
            del self._docs[count:]
            return
        self._offsets = self._offsets[:count]
        end = self.end()
        self._offsets = np.zeros(0, dtype=np.int64)  # no map of the offsets file while it shrinks
        _shrink(self.directory / DOCS_FILE, end)
        _shrink(self.directory / OFFSETS_FILE, count * np.dtype(np.int64).itemsize)
        self._offsets = _read_offsets(self.directory / OFFSETS_FILE)


def _shrink(path: Path, size: int) -> None:
    """Cut ``path`` to ``size`` bytes where it is longer."""
    if path.exists() and path.stat().st_size > size:
        os.truncate(path, size)


def _read_offsets(path: Path) -> np.ndarray:
    """Line offsets, memory-mapped (flat memory for big corpora)."""
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.memmap(path, dtype=np.int64, mode="r")


def refuse_a_string(documents: Any, what: str = "documents") -> None:
    """A plain string where a list of documents belongs is refused: read as a file path it was "file not found",
    and read as a sequence, one document per character."""
    if isinstance(documents, str):
        shown = documents if len(documents) <= 40 else documents[:37] + "..."
        raise TypeError(f"{what} is a string ({shown!r}); pass a list of {what}, e.g. [{shown!r}], or a Path "
                        "for a JSONL file")


def normalise_documents(documents: Sequence[str | dict] | Path) -> list[dict]:
    """Documents as dicts with a string ``text`` that is not empty nor only whitespace (errors name the position).

    ``documents`` is a list (any iterable) of strings or dicts, or a ``Path`` of a JSONL file. A plain string is
    refused: read as a file path, a document was "file not found", and a file name given as a document indexed
    that file.
    """
    refuse_a_string(documents)
    docs = []
    for where, record in iter_records(documents):
        if not isinstance(record.get("text"), str):
            raise ValueError(f"{where}: a document needs a string 'text' field")
        if what := blank_kind(record["text"]):  # embedded as the instruction alone, it would sit near every query
            raise ValueError(f"{where}: a document's 'text' {what}")
        docs.append(dict(record))
    return docs


class Retriever:
    """Search documents for one task with an embedder and a vector index.

    Build in memory (``out_dir=None``) or into an index directory (see ``llm_embedder.index.build``);
    ``load`` reopens a directory and refuses an embedder whose model or instructions differ from the index's.

    One object is safe to share between threads: ``add``, ``delete``, ``search`` and ``documents`` take turns on
    ``lock`` (encoding runs outside it). Writers of an index directory hold its lock file while they write, and
    an object refuses to write (``IndexChangedError``) once another has changed the directory since it read it.

    In an index directory of a FAISS index whose adds replay bit for bit (``FaissIndex.replayable``: Flat, SQ), an
    add appends to the embeddings file and a delete to deleted.ids, and each commits with meta.json; the index file
    is a checkpoint, written when enough has changed since the last one, by ``save`` and by ``close`` (also on
    leaving a ``with`` block), and ``load`` adds what came after it. Other indexes (HNSW, IVF, PQ; Milvus) save the
    index with every add and delete.
    """

    def __init__(
        self, embedder: Any, task: str, index: VectorIndex, docs: DocStore, out_dir: Path | None = None,
        meta: dict | None = None,
    ) -> None:
        self.embedder = embedder
        self.task = task
        self.index = index
        self.docs = docs
        self.out_dir = out_dir
        self.meta = meta or {}
        self.lock = threading.RLock()  # reentrant: a store holds it around its own bookkeeping and the add
        self._disk = _disk_state(out_dir, index.backend) if out_dir is not None else None
        self._broken: str | None = None  # why this object no longer writes (a failed add it could not undo)
        self._unsaved = False  # this object committed adds or deletes that the index file does not hold yet

    def __len__(self) -> int:
        return self.index.count

    @classmethod
    def build(
        cls, embedder: Any, task: str, documents: Sequence[str | dict] | Path = (), out_dir: str | Path | None = None,
        factory: str = "Flat", backend: str = "faiss", batch_size: int = 64,
    ) -> Retriever:
        """Encode ``documents`` (a list of strings or of dicts with ``text``, or a ``Path`` of a JSONL file) for
        ``task`` and index them."""
        from llm_embedder.index.faiss_index import FaissIndex
        from llm_embedder.tasks import get_task

        get_task(task)
        docs = normalise_documents(documents)
        if out_dir is not None:
            build_index(docs, out_dir, embedder, task, factory=factory, backend=backend, batch_size=batch_size,
                        filter_fields=["*"], progress=False, option="out_dir")
            return cls.load(out_dir, embedder)
        if backend != "faiss":
            raise ValueError("an in-memory Retriever uses FAISS; pass out_dir for Milvus")
        meta = {"model": embedder.name, "task": task, "instruction_hash": instruction_hash(embedder, task),
                "key_max_length": key_max_length(embedder), "dim": int(embedder.dim), "factory": factory,
                "backend": "faiss", "count": 0, "stored_fields": []}
        retriever = cls(embedder, task, FaissIndex(int(embedder.dim), factory), DocStore(), None, meta)
        retriever.add(docs)
        return retriever

    @classmethod
    def load(cls, index_dir: str | Path, embedder: Any = None, model: str | Path | None = None) -> Retriever:
        """Reopen an index directory; ``embedder=None`` loads ``model`` (default: the model named in its
        meta.json), keeping the tokens of a document that the index's vectors were encoded with."""
        from llm_embedder.index.faiss_index import FaissIndex

        index_dir = Path(index_dir)
        meta_path = index_dir / META_FILE
        if not meta_path.exists():
            what = f"is not a finished index directory (no {META_FILE})" if index_dir.exists() else "not found"
            raise FileNotFoundError(f"index {index_dir} {what}")
        try:
            backend = json.loads(meta_path.read_text(encoding="utf-8")).get("backend", "faiss")
            # what the folder holds before the meta.json read from: an add another process commits from here on
            # shows as a change, and this object then neither rolls it back (_settle_on_load) nor writes over it
            disk = _disk_state(index_dir, backend)
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            task, dim = meta["task"], int(meta["dim"])
            length = meta.get("key_max_length")
            if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
                raise ValueError(f"key_max_length must be a positive integer, got {length!r}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise IndexFormatError(f"{meta_path}: corrupt index metadata: {err}") from None
        if embedder is None:
            from llm_embedder.embedder import Embedder

            if model is None:
                model = meta.get("model_path") if Path(meta.get("model_path", "")).is_dir() else meta["model"]
            embedder = Embedder(model, key_max_length=meta.get("key_max_length"))
        check_compatible(meta, embedder, index_dir)
        if meta.get("backend", "faiss") == "milvus":
            from llm_embedder.index.milvus_index import MilvusIndex

            index: VectorIndex = MilvusIndex.load(index_dir / MILVUS_FILE)
        else:
            index = FaissIndex.load(index_dir / FAISS_FILE, factory=meta.get("factory"))
        if index.dim != dim:
            raise IndexFormatError(f"{index_dir}: index has dimension {index.dim}, meta.json says {dim}")
        docs = DocStore(index_dir)
        count = meta.get("count", len(docs))
        if len(docs) < count:
            raise IndexFormatError(f"{index_dir}: {DOCS_FILE} has {len(docs)} documents, meta.json says {count}")
        # documents past meta.json's count, and vectors past them: an add that did not finish (killed), or one a
        # writer is making now; they are not read, and rolled back under the directory's lock
        meta, docs = {**meta, "count": count}, DocStore(index_dir, count)
        if meta.get("backend", "faiss") == "faiss":
            # a directory without them (a build's, an earlier version's) has its index file saved with every change
            meta = {"deleted": 0, "index_rows": count, "index_deleted": meta.get("deleted", 0), **meta}
            catch_up(index, index_dir, meta, docs)  # the adds and deletes committed since the index file was saved
        retriever = cls(embedder, task, index, docs, index_dir, meta)
        retriever._disk = disk
        retriever._settle_on_load()
        return retriever

    def _settle_on_load(self) -> None:
        """Roll back what an add that did not finish left in the directory, where no writer holds it now."""
        if self._leftovers() is None:
            return
        try:
            with exclusive(self.out_dir / LOCK_FILE, f"the index {self.out_dir}"):
                if _disk_state(self.out_dir, self.index.backend) != self._disk:
                    return  # written meanwhile: this object is stale, its next write says so
                done = self._settle()
                self._disk = _disk_state(self.out_dir, self.index.backend)
        except OSError:  # a writer at work (its add is not read meanwhile), or a folder this process cannot write
            return
        if done:
            warnings.warn(f"{self.out_dir}: {done}", IndexRepairedWarning, stacklevel=3)

    def search(
        self, queries: str | Sequence[str], k: int = 10, filter: Mapping[str, Any] | None = None, *,
        nprobe: int | None = None, ef_search: int | None = None,
    ) -> list[list[Hit]]:
        """Top-k hits per query (fewer when the index holds fewer matching documents).

        ``nprobe`` (IVF indexes: lists searched; FAISS default 16) and ``ef_search`` (HNSW: candidates kept;
        FAISS default 128) raise recall at some speed for this search; an index without IVF or HNSW refuses them."""
        check_k(k)  # before the queries are encoded
        effort = check_effort(nprobe, ef_search)
        self.check_filter_fields(filter)
        texts = text_list(queries, "queries")  # a set, a dict or bytes refused as encode refuses them
        check_queries(texts)
        return self._hits(self.embedder.encode_queries(texts, self.task), k, filter, effort)

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, filter: Mapping[str, Any] | None = None, *,
        nprobe: int | None = None, ef_search: int | None = None,
    ) -> list[list[Hit]]:
        """``search`` for queries already encoded, one row each, as ``embedder.encode_queries(texts, self.task)``
        encodes them: for a caller that encodes queries in batches of its own (the server merges concurrent
        requests' queries into one model call)."""
        check_k(k)
        effort = check_effort(nprobe, ef_search)
        self.check_filter_fields(filter)
        return self._hits(vectors, k, filter, effort)  # the index checks the vectors' shape and dimension

    def search_vectors_many(
        self, requests: Sequence[tuple[np.ndarray, Mapping[str, Any]]]
    ) -> list[list[list[Hit]] | Exception]:
        """``search_vectors`` for several requests at once, each a pair (its query vectors, its keyword arguments of
        ``search_vectors``: ``k``, ``filter``, ``nprobe``, ``ef_search``): per request its hits, or the exception
        ``search_vectors`` raises for it alone, returned (this raises nothing), so one bad request fails alone.

        Where the index allows it (``FaissIndex.shared_search``; not Milvus), requests with the same filter and
        search effort are searched in one index call, their rows together: with the largest ``k`` among them, each
        row then cut to its own, where the index's top k are the first k of a larger search (Flat, SQ, PQ, IVF),
        else one call per ``k``. A request with a row cut between hits of equal score is searched again alone:
        which of them a search of its own k keeps is the index's choice. So each request gets the hits it gets
        alone, up to the rounding of FAISS's batched matrix products (which a request of 20 queries or more gets
        alone too). The server searches the requests that share a model batch so."""
        results: list[Any] = [None] * len(requests)
        shared = getattr(self.index, "shared_search", None)  # "any k", "same k", or None: each request alone
        groups: dict[Any, list[tuple[int, np.ndarray, int]]] = {}
        for i, (vectors, options) in enumerate(requests):
            key, rows, k = self._search_group(vectors, options, shared), vectors, 0
            if key is None:
                key = ("alone", i)  # search_vectors says what is wrong with it, or takes it (a 1-D row, say)
            else:
                rows, k = np.asarray(vectors, dtype=np.float32), int(options.get("k", 10))
            groups.setdefault(key, []).append((i, rows, k))
        alone: list[int] = []
        for members in groups.values():
            if len(members) == 1:
                alone.append(members[0][0])
                continue
            options = requests[members[0][0]][1]  # the group's filter and effort (each request's k is in members)
            cuts = [k for _, rows, k in members for _ in range(len(rows))]
            try:
                self.check_filter_fields(options.get("filter"))
                hits = self._hits(np.concatenate([rows for _, rows, _ in members]), max(cuts), options.get("filter"),
                                  check_effort(options.get("nprobe"), options.get("ef_search")), cuts)
            except Exception:  # noqa: BLE001 - each request is searched alone below, and fails with its own error
                alone.extend(i for i, _, _ in members)
                continue
            start = 0
            for i, rows, _ in members:
                own = hits[start : start + len(rows)]
                start += len(rows)
                if any(row is None for row in own):
                    alone.append(i)
                else:
                    results[i] = own
        for i in sorted(alone):
            vectors, options = requests[i]
            try:
                results[i] = self.search_vectors(vectors, **options)
            except Exception as err:  # noqa: BLE001 - returned: this request's failure, not the others'
                results[i] = err
        return results

    def _search_group(self, vectors: Any, options: Any, shared: str | None) -> Any:
        """The key of the requests that may share a search with this one (vectors, search_vectors's keyword
        arguments) in ``search_vectors_many``: its filter, its effort, and its k unless any k may share (``shared``,
        the index's ``shared_search``); None where it is searched alone."""
        try:
            if shared is None or set(options) - {"k", "filter", "nprobe", "ef_search"}:
                return None
            k = check_k(options.get("k", 10))
            effort = check_effort(options.get("nprobe"), options.get("ef_search"))
            rows = np.asarray(vectors, dtype=np.float32)
            if rows.ndim != 2 or rows.shape[1] != self.index.dim or not len(rows):
                return None
            return _filter_key(options.get("filter")), tuple(sorted(effort.items())), None if shared == "any k" else k
        except (ValueError, TypeError, AttributeError):
            return None

    def _hits(self, vectors: np.ndarray, k: int, filter: Mapping[str, Any] | None, effort: dict[str, int],
              cuts: Sequence[int] | None = None) -> list[list[Hit] | None]:
        """The index's top-k per query vector, as hits with their documents. ``cuts``: per row, how many of the
        ``k`` found to keep (rows of several requests searched together); a row whose cut falls between two hits of
        equal score is None."""
        with self.lock:  # an add between the index and the documents would hit an id the documents lack
            if k > max(len(self.docs), HUGE_K):  # -k 2147483647 sized FAISS's result arrays by itself: a C++ abort
                most = max(len(self.docs), self.index.count, 1)  # no row holds more hits than the index holds
                k, cuts = most, None if cuts is None else [min(cut, most) for cut in cuts]
            scores, ids = self.index.search(vectors, k, filter=filter, **effort)
            rows = []
            known = len(self.docs)  # an id past the documents is an add not finished (see _settle): left out
            for r, (row_scores, row_ids) in enumerate(zip(scores, ids, strict=True)):
                if cuts is not None:  # before the unknown ids are left out, as a search of the row's own k would
                    cut = cuts[r]
                    if cut < k and row_ids[cut] >= 0 and row_scores[cut] == row_scores[cut - 1]:
                        rows.append(None)
                        continue
                    row_scores, row_ids = row_scores[:cut], row_ids[:cut]
                keep = [(float(s), int(i)) for s, i in zip(row_scores, row_ids, strict=True) if 0 <= i < known]
                rows.append((keep, self.docs.get(i for _, i in keep)))
        return [
            None if row is None else
            [Hit(id=i, score=s, text=doc["text"], metadata={k2: v for k2, v in doc.items() if k2 != "text"})
             for (s, i), doc in zip(row[0], row[1], strict=True)]
            for row in rows
        ]

    def check_filter_fields(self, filter: Mapping[str, Any] | None) -> None:
        """Refuse a filter on a field the index never stored: it would match nothing, silently. Under ``"*"``
        (every field) that is a field no document holds, a typo most likely."""
        check_filter(filter)  # a name that cannot be a filter field is refused as such, not advised as one to store
        stored = self.meta.get("filter_fields") if self.out_dir is not None else ["*"]
        if not filter or stored is None:  # None: an index from before the field was recorded
            return
        if "*" in stored:
            held = self.meta.get("stored_fields")
            missing = [field for field in filter if held is not None and field not in held]
            if missing:
                raise FilterError(f"filter on {', '.join(map(repr, missing))}, but no document in the index has "
                                 f"that field; the fields are: {', '.join(held) or 'none'}")
            return
        missing = [field for field in filter if field not in stored]
        if missing:
            kept = ", ".join(stored) if stored else "none"
            raise FilterError(
                f"filter on {', '.join(map(repr, missing))}, but the index stores only these fields for filtering: "
                f"{kept}; build it with --filter-field {missing[0]} (Python: filter_fields=[{missing[0]!r}])"
            )

    def add(self, documents: Sequence[str | dict] | Path) -> list[int]:
        """Encode and index more documents (as ``build`` takes them); returns their ids. In an index directory they
        are saved at once: the embeddings file grows with them (one row per document) and meta.json counts them;
        the index file is saved with them only where it cannot replay them (see ``Retriever``) or they train it."""
        docs = normalise_documents(documents)
        if not docs:
            return []
        lines = self.docs.lines(docs)  # before the index changes: a failure here leaves it as it was
        fields = self.meta.get("filter_fields", []) if self.out_dir is not None else ["*"]
        # before encoding too: a field no index can store for filtering is refused, naming the document
        metadata = [filterable(d, fields, f"documents[{i}]") for i, d in enumerate(docs)] if fields else None
        vectors = self.embedder.encode_keys([d["text"] for d in docs], self.task)
        with self.lock, self._writing():  # ids follow the documents stored when the add's turn comes
            start = len(self.docs)
            ids = list(range(start, start + len(docs)))
            meta = {**self.meta, "count": start + len(docs)}
            if metadata and isinstance(meta.get("stored_fields"), list):
                meta["stored_fields"] = sorted({*meta["stored_fields"], *(k for m in metadata for k in m)})
            journaled = self._journaled()  # before the add, which trains an untrained index
            try:
                # documents first, vectors after, meta.json last: an add is in once meta.json counts it, and one
                # that fails (or is killed) is rolled back to the documents meta.json counts (see _settle)
                self.docs.append(docs, lines)
                if self.out_dir is not None:
                    _append_rows(self.out_dir / EMBEDDINGS_FILE, vectors)
                self.index.add(ids, vectors, metadata)
                if self.out_dir is not None:
                    if not journaled:  # saved with its vectors: HNSW, IVF, PQ, an index this add trained, Milvus
                        self.index.save(self.out_dir / index_file(self.index.backend))
                        if self.index.backend == "faiss":
                            meta["index_rows"], meta["index_deleted"] = meta["count"], meta.get("deleted", 0)
                    with atomic_write(self.out_dir / META_FILE) as handle:
                        json.dump(meta, handle, indent=2)
            except BaseException as err:
                self._undo(start, err)
                raise
            self.meta = meta
            self._unsaved = journaled  # an add saved with its vectors saved the rest too
            if journaled:
                self._checkpoint_if_due()
        return ids

    def _journaled(self) -> bool:
        """Whether a change to this index directory goes to its journals alone (the embeddings file, deleted.ids),
        the index file being a checkpoint: a FAISS index, trained, whose adds replay (``FaissIndex.replayable``)."""
        return (self.out_dir is not None and self.index.backend == "faiss" and self.index.is_trained
                and self.index.replayable)

    def _pending(self) -> int:
        """The rows added and ids deleted since the index file's checkpoint (as meta.json records it)."""
        return sum(behind_checkpoint(self.meta))

    def _checkpoint_if_due(self) -> None:
        """After a committed add or delete, with the locks held: save the index file once enough is pending. A
        failure is a warning, not the caller's error: what was committed is in the journals (the next load reads
        it from there), and the previous checkpoint stays whole (the save replaces it atomically)."""
        if self._pending() < max(CHECKPOINT_ROWS, CHECKPOINT_SHARE * int(self.meta["count"])):
            return
        try:
            self._checkpoint()
        except Exception as err:  # noqa: BLE001 - see the docstring
            warnings.warn(f"{self.out_dir}: could not save the index file ({err}); what was added or deleted is "
                          "kept in the embeddings file and deleted.ids, and read from them when it is loaded",
                          IndexCheckpointWarning, stacklevel=3)

    def _checkpoint(self) -> None:
        """With the locks held: save the FAISS index file, then record in meta.json what it holds. Killed between
        the two, the file holds more than meta.json says, which ``catch_up`` allows for."""
        self.index.save(self.out_dir / FAISS_FILE)
        meta = {**self.meta, "index_rows": int(self.meta["count"]), "index_deleted": int(self.meta.get("deleted", 0))}
        with atomic_write(self.out_dir / META_FILE) as handle:
            json.dump(meta, handle, indent=2)
        self.meta = meta
        self._unsaved = False

    def save(self) -> None:
        """Save an index directory's FAISS index file now if adds or deletes since its last save are in the journals
        only (nothing to do in memory or for Milvus, which save at once). Then ``index.faiss`` holds every document
        meta.json counts, for a reader that opens the file alone (``open_index``); ``load`` needs no save."""
        if self.out_dir is None or self.index.backend != "faiss":
            return
        with self.lock, self._writing():
            if self._unsaved or self._pending():
                self._checkpoint()

    def _undo(self, start: int, err: BaseException) -> None:
        """Take a failed add (or delete) back: the index, documents, embeddings and deletions as meta.json counts
        them (``start`` documents). Where that fails too, this object refuses to write again (``Retriever.load``
        repairs the directory)."""
        try:
            if self.out_dir is None:
                stray = self.index.held_from(start)
                if stray:
                    self.index.delete(stray)  # a FAISS index that cannot delete (HNSW) refuses: broken below
                self.docs.truncate(start)
                return
            if self.index.backend == "faiss":  # the index file and the journals as meta.json counts them
                from llm_embedder.index.faiss_index import FaissIndex

                index = FaissIndex.load(self.out_dir / FAISS_FILE, factory=self.meta.get("factory"))
                catch_up(index, self.out_dir, self.meta, DocStore(self.out_dir, int(self.meta["count"])))
                self.index = index
            done = self._settle()
            self._disk = _disk_state(self.out_dir, self.index.backend)
            if done and "kept" in done:
                err.add_note(f"{self.out_dir}: {done}")
        except Exception as undo_err:  # noqa: BLE001 - the add's own error is the one raised
            where = f"the index {self.out_dir}" if self.out_dir is not None else "this in-memory index"
            self._broken = (f"an add to {where} failed ({err}) and could not be undone ({undo_err}); open it again "
                            "(Retriever.load rolls the add back)")
            err.add_note(self._broken)

    def _leftovers(self) -> tuple[list[int], int] | None:
        """What an index directory holds past the documents and deletions meta.json counts, None if nothing: the
        index's ids from that count on, and the document rows on disk."""
        count, out = int(self.meta["count"]), self.out_dir
        rows = (out / OFFSETS_FILE).stat().st_size // ID_BYTES
        stray = self.index.held_from(count)
        embeddings = out / EMBEDDINGS_FILE
        row_bytes = int(self.meta["dim"]) * np.dtype(np.float32).itemsize
        longer = (embeddings.exists() and embeddings.stat().st_size > count * row_bytes) or \
            (out / OFFSETS_FILE).stat().st_size % ID_BYTES or \
            (out / DOCS_FILE).stat().st_size > DocStore(out, count).end() or \
            _size(out / DELETED_FILE) > int(self.meta.get("deleted", 0)) * ID_BYTES
        return (stray, rows) if stray or rows > count or longer else None

    def _settle(self) -> str | None:
        """With the directory's lock held: roll back an add that did not finish (documents, embedding rows and
        vectors past the documents meta.json counts) or a delete (ids in deleted.ids past those meta.json counts);
        returns what was done, in words, or None.

        An add whose vectors are all in a FAISS index that cannot delete them (HNSW), with its documents and
        embeddings written, is kept instead: only meta.json's count was missing."""
        leftovers = self._leftovers()
        if leftovers is None:
            return None
        committed = json.loads((self.out_dir / META_FILE).read_text(encoding="utf-8"))
        if committed.get("count") != self.meta["count"] or committed.get("deleted", 0) != self.meta.get("deleted", 0):
            # another writer committed since this object read meta.json: not ours
            raise IndexChangedError(f"the index {self.out_dir} changed since it was opened (another writer?); "
                                    "open it again")
        stray, rows = leftovers
        count, out = int(self.meta["count"]), self.out_dir
        row_bytes = int(self.meta["dim"]) * np.dtype(np.float32).itemsize
        embeddings = out / EMBEDDINGS_FILE
        if stray:
            try:
                self.index.delete(stray)
            except ValueError as err:
                whole = stray == list(range(count, rows)) and embeddings.stat().st_size >= rows * row_bytes
                if not whole:
                    raise IndexFormatError(
                        f"{out}: the index holds {len(stray)} vector(s) past its {count} documents (ids "
                        f"{stray[:5]}...), left by an add that did not finish, and they cannot be removed ({err}); "
                        "rebuild the index") from None
                return self._keep(count, rows)
        added = rows - count
        deleted = int(self.meta.get("deleted", 0))
        journal = _size(out / DELETED_FILE) // ID_BYTES - deleted
        self.docs = DocStore(out)
        self.docs.truncate(count)  # cutting files back needs no space: before the index's save, which does
        _shrink(embeddings, count * row_bytes)
        _shrink(out / DELETED_FILE, deleted * ID_BYTES)  # a delete that did not finish (its ids are still held)
        if stray:
            self.index.save(out / index_file(self.index.backend))
        done = []
        if added > 0 or stray or not journal:
            done.append(f"rolled back an add that did not finish: {max(added, 0)} document(s) and {len(stray)} "
                        f"vector(s) past the {count} documents meta.json counts were removed")
        if journal:
            done.append(f"rolled back a delete that did not finish: {journal} id(s) past the {deleted} deletions "
                        "meta.json counts were removed from deleted.ids")
        return "; ".join(done)

    def _keep(self, count: int, rows: int) -> str:
        """Count the documents ``count..rows`` in (their vectors are all in the index; see ``_settle``)."""
        out = self.out_dir
        docs = DocStore(out, rows)
        meta = {**self.meta, "count": rows}
        if self.index.backend == "faiss":  # the index file holds them all: it was saved with them
            meta["index_rows"], meta["index_deleted"] = rows, meta.get("deleted", 0)
        fields = meta.get("filter_fields") or []
        if fields and isinstance(meta.get("stored_fields"), list):
            added = [filterable(doc, fields) for doc in docs.get(range(count, rows))]
            meta["stored_fields"] = sorted({*meta["stored_fields"], *(k for m in added for k in m)})
        _shrink(out / DOCS_FILE, docs.end())
        _shrink(out / EMBEDDINGS_FILE, rows * int(meta["dim"]) * np.dtype(np.float32).itemsize)
        with atomic_write(out / META_FILE) as handle:
            json.dump(meta, handle, indent=2)
        self.docs, self.meta = docs, meta
        return (f"kept an add of {rows - count} document(s) that did not finish: its vectors were all saved in an "
                "index that cannot delete them, only meta.json's count was missing")

    def documents(self) -> list[tuple[int, dict]]:
        """``(id, document)`` for every document still in the index, by id: what a store reopened from its
        directory rebuilds its state from (a deleted document stays in docs.jsonl but is left out)."""
        with self.lock:
            ids = range(len(self.docs))
            if self.index.count != len(self.docs):  # something was deleted: keep the ids the index still holds
                ids = self.index.held(ids)
            return list(zip(ids, self.docs.get(ids), strict=True))

    def delete(self, ids: Sequence[int]) -> int:
        """Remove documents from the index (their text stays in docs.jsonl); returns how many were removed. In an
        index directory of a FAISS index the removed ids go to the deletion journal, deleted.ids, and meta.json
        counts them (the index file is a checkpoint, see ``Retriever``); Milvus saves its index."""
        with self.lock, self._writing():
            if not self._journaled():
                removed = self.index.delete(ids)
                if self.out_dir is not None:
                    self.index.save(self.out_dir / index_file(self.index.backend))
                return removed
            id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
            held = self.index.held(id_array)
            removed = self.index.delete(id_array)  # one that cannot delete refuses here, before anything is written
            if not held:
                return removed
            deleted = int(self.meta.get("deleted", 0))
            meta = {**self.meta, "deleted": deleted + len(held)}
            try:  # the ids first, meta.json last: a delete is in once meta.json counts it (as an add)
                with (self.out_dir / DELETED_FILE).open("ab") as handle:
                    handle.write(np.asarray(held, dtype=np.int64).tobytes())
                with atomic_write(self.out_dir / META_FILE) as handle:
                    json.dump(meta, handle, indent=2)
            except BaseException as err:
                self._undo(len(self.docs), err)
                raise
            self.meta, self._unsaved = meta, True
            self._checkpoint_if_due()
        return removed

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """For an index directory: hold its lock file (a second writer is refused, ``RunInProgressError``) and
        write only if it still holds what this object read. Two objects opened on one directory each numbered
        new documents after what they had read and saved their own index over the other's, pairing a vector
        with another document's text."""
        if self._broken:
            raise IndexChangedError(self._broken)
        if self.out_dir is None:
            yield
            return
        with exclusive(self.out_dir / LOCK_FILE, f"the index {self.out_dir}"):
            if _disk_state(self.out_dir, self.index.backend) != self._disk:
                raise IndexChangedError(f"the index {self.out_dir} changed since it was opened (another writer?); "
                                        "open it again")
            done = self._settle()  # what a killed add left (seen at load while another writer held the lock)
            if done:
                warnings.warn(f"{self.out_dir}: {done}", IndexRepairedWarning, stacklevel=4)
            try:
                yield
            finally:  # what changed since the check above is this object's own doing (failed writes included)
                self._disk = _disk_state(self.out_dir, self.index.backend)

    def close(self) -> None:
        """Save the index file where this object's adds or deletes are in the journals only (``save``), then
        release the index. Another writer at work, or one that wrote since, leaves the saving to it: what this
        object committed is in the journals either way, and ``load`` reads it from there."""
        try:
            if self._unsaved and not self._broken:
                self.save()
        except (IndexChangedError, RunInProgressError):
            pass
        except OSError as err:
            warnings.warn(f"{self.out_dir}: could not save the index file ({err}); what was added or deleted is "
                          "kept in the embeddings file and deleted.ids", IndexCheckpointWarning, stacklevel=2)
        finally:
            self.index.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# a k above this and above the documents is cut to what the index holds (a count, which costs a Milvus query: the
# index may hold vectors of an add not yet committed, so the documents' count is not enough); below it, the padded
# result arrays are small
HUGE_K = 16384


def _filter_key(filter: Mapping[str, Any] | None) -> Any:
    """A filter as a hashable key, equal for filters that select alike: fields in any order, each value with its
    type (``1``, ``1.0`` and ``True`` are equal in Python, not to every backend); a bad filter raises as
    ``check_filter`` does."""
    conditions = check_filter(filter)
    if conditions is None:
        return None
    return tuple(sorted((field, tuple((type(v).__name__, v) for v in values)) for field, values in conditions.items()))


class IndexChangedError(RuntimeError):
    """An index directory changed since this object read it (another writer added or deleted documents), or a
    failed add could not be undone: open it again."""


class IndexRepairedWarning(UserWarning):
    """An index directory held what an add that did not finish left behind; it was rolled back (or kept)."""


class IndexCheckpointWarning(UserWarning):
    """An index directory's FAISS file could not be saved after a committed add or delete (a full disk): the change
    is kept in the journals, and read from them at load."""


def catch_up(index: Any, out_dir: Path, meta: dict, docs: DocStore) -> None:
    """Bring a FAISS index read from an index directory's file up to what ``meta`` (its meta.json) commits: add the
    embedding rows past those the file holds (``index_rows``; all of them before that was recorded), less the
    deleted ids, and remove the deleted ids it still holds (deleted.ids, the first ``deleted``).

    Ids the file holds already are not added again, and a deleted one never: a file saved after meta.json was read
    (by a writer at work, or one killed before it recorded the save) holds more than ``index_rows`` says."""
    count = int(meta["count"])
    start = min(int(meta.get("index_rows", count)), count)
    deleted = read_deleted(out_dir, int(meta.get("deleted", 0)))
    if start < count:
        rows = np.setdiff1d(np.arange(start, count, dtype=np.int64), index.held_from(start))
        _add_rows(index, out_dir, np.setdiff1d(rows, deleted), meta, docs)
    if deleted.size:
        gone = index.held(deleted)
        if gone:
            index.delete(gone)


def _add_rows(index: Any, out_dir: Path, rows: np.ndarray, meta: dict, docs: DocStore) -> None:
    """Add the embedding rows ``rows`` (sorted ids) to ``index``, with the filter fields of their documents, in
    blocks read from the embeddings file."""
    if not rows.size:
        return
    dim = int(meta["dim"])
    path = out_dir / EMBEDDINGS_FILE
    held = _size(path) // (dim * np.dtype(np.float32).itemsize)
    if held <= rows[-1]:
        raise IndexFormatError(f"{out_dir}: {EMBEDDINGS_FILE} holds {held} vectors, meta.json counts {meta['count']} "
                               "documents")
    fields = meta.get("filter_fields", [])
    for first in range(0, len(rows), READ_BLOCK):
        ids = rows[first : first + READ_BLOCK]
        lo, hi = int(ids[0]), int(ids[-1]) + 1
        block = np.fromfile(path, dtype=np.float32, count=(hi - lo) * dim, offset=lo * dim * 4).reshape(hi - lo, dim)
        metadata = [filterable(doc, fields) for doc in docs.get(ids.tolist())] if fields else None
        index.add(ids, np.ascontiguousarray(block[ids - lo]), metadata, copy=False)


def read_deleted(out_dir: Path, count: int) -> np.ndarray:
    """The first ``count`` ids of an index directory's deletion journal (those meta.json counts)."""
    path = out_dir / DELETED_FILE
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    ids = np.fromfile(path, dtype=np.int64, count=count) if path.exists() else np.zeros(0, dtype=np.int64)
    if len(ids) < count:
        raise IndexFormatError(f"{out_dir}: {DELETED_FILE} holds {len(ids)} deleted ids, meta.json counts {count}")
    return ids


def _append_rows(path: Path, vectors: np.ndarray) -> None:
    """Append float32 rows to an index directory's embeddings file (the journal of its adds)."""
    with path.open("ab") as handle:
        handle.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())


def _size(path: Path) -> int:
    """A file's size, 0 where there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def index_file(backend: str) -> str:
    """The file name of an index directory's vector index (Milvus: its descriptor)."""
    return MILVUS_FILE if backend == "milvus" else FAISS_FILE


def _disk_state(out_dir: Path, backend: str) -> tuple[int, tuple[int, int, int] | None, tuple[int, int, int] | None]:
    """What an index directory holds, cheaply: its documents (rows of docs.offsets), and its index file's and
    meta.json's identities (inode, size, modification time; a save replaces the file). Equal before and after:
    nobody wrote. meta.json is in it because an add commits by writing it last, changing nothing else."""
    rows = (out_dir / OFFSETS_FILE).stat().st_size // np.dtype(np.int64).itemsize
    return rows, _identity(out_dir / index_file(backend)), _identity(out_dir / META_FILE)


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def check_queries(queries: Sequence[str]) -> None:
    """Refuse an empty query: it would be encoded as the instruction alone and return the documents nearest to
    nothing. The message counts queries from 1."""
    for i, query in enumerate(queries):
        if not isinstance(query, str):
            raise TypeError(f"query {i + 1} is a {type(query).__name__}, not a string")
        if blank_kind(query):
            raise ValueError(f"query {i + 1} is empty; give the text to search for")


def check_compatible(meta: dict, embedder: Any, where: Path | str) -> None:
    """Refuse an embedder whose model, dimension, task instructions or document tokens differ from the index's
    (say which): its keys would not be the vectors the index holds, and ``add`` would mix the two.

    An index written before it recorded ``key_max_length`` is not checked for it. The same model folder whose
    weight files changed since the build (``model_version``: retrained in place) is only warned about: a copy
    that did not keep file times looks the same.
    """
    problems = []
    same_path = str(Path(embedder.path).resolve()) == meta.get("model_path")
    if not same_path and str(embedder.name) != meta.get("model"):
        problems.append(f"model: index was built with {meta.get('model')!r}, the embedder is {embedder.name!r}")
    if int(embedder.dim) != int(meta["dim"]):
        problems.append(f"dimension: index has {meta['dim']}, the embedder gives {embedder.dim}")
    expected = instruction_hash(embedder, meta["task"])
    if expected != meta.get("instruction_hash"):
        problems.append(
            f"task instructions: the index was encoded for task {meta['task']!r} with instruction hash "
            f"{meta.get('instruction_hash')}, the embedder's instructions for it hash to {expected}"
        )
    length = key_max_length(embedder)
    if meta.get("key_max_length") is not None and length is not None and length != int(meta["key_max_length"]):
        problems.append(
            f"document tokens: the index's vectors keep {meta['key_max_length']} tokens of a document, the embedder "
            f"keeps {length} (encode at {meta['key_max_length']}: Embedder(key_max_length=...) or --max-length, or "
            "rebuild the index)"
        )
    if problems:
        raise ValueError(f"{where}: embedder does not match the index ({'; '.join(problems)})")
    if meta.get("model_version") is None or str(embedder.name) in EMBEDDER_ALIASES:
        return
    if same_path and model_version(embedder.path) != meta["model_version"]:
        warnings.warn(f"{where}: the weight files of {embedder.path} changed since the index was built; if the model "
                      "was retrained, rebuild the index (its vectors come from the old weights)", ModelChangedWarning,
                      stacklevel=3)
    elif not same_path and model_version(embedder.path) != meta["model_version"]:
        # the same name, another folder (a relative path from elsewhere, a copy): a copy keeping file times passes
        warnings.warn(f"{where}: the model {embedder.name!r} is {Path(embedder.path).resolve()}, not the folder the "
                      f"index was built with ({meta.get('model_path')}), and its weight files differ; if it is another "
                      "model, its vectors do not match the index's", ModelChangedWarning, stacklevel=3)
