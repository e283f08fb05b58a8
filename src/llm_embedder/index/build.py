"""Streaming corpus encoding into a resumable float32 memmap, then an index, with metadata.

Layout of an index directory::

    docs.jsonl          the documents, line i = id i (``text`` is what was embedded)
    docs.offsets        int64 byte offset of each line of docs.jsonl (random access, flat memory)
    embeddings.memmap   float32 (count, dim) key vectors
    progress.json       how far the build got (rows encoded); lets a re-run continue
    index.faiss         or index.db + index.milvus.json for Milvus (index.faiss.meta.json: the stored filter fields)
    deleted.ids         int64 ids ``Retriever.delete`` removed from a FAISS index (none after a build)
    meta.json           model, model path, task, instruction hash, document tokens, dim, count, factory, backend
                        (written last)

``Retriever.add`` appends to docs.jsonl, docs.offsets and embeddings.memmap and ``delete`` to deleted.ids, then
commits with meta.json; index.faiss is a checkpoint written now and then, and ``meta.json``'s ``index_rows`` and
``index_deleted`` say how many embedding rows and deletions it holds at least (``Retriever.load`` adds the rest).

Peak memory does not grow with the corpus: records are streamed, one batch of texts is in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.index.base import check_filter_fields, is_filter_field
from llm_embedder.io import (
    LOCK_FILE,
    DataError,
    as_recorded,
    atomic_write,
    blank_kind,
    check_output_dir,
    check_template,
    exclusive,
    fill_template,
    iter_jsonl,
)
from llm_embedder.models import model_version
from llm_embedder.progress import count_progress

META_FILE = "meta.json"
PROGRESS_FILE = "progress.json"
DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets"
EMBEDDINGS_FILE = "embeddings.memmap"
FAISS_FILE = "index.faiss"
DELETED_FILE = "deleted.ids"
MILVUS_DB = "index.db"
MILVUS_FILE = "index.milvus.json"
# Rows per add to an HNSW or Milvus index (65536 x 384 float32 = 96 MB): HNSW inserts a batch in level order,
# so another chunk size would build another graph. Other FAISS indexes encode each vector on its own and are
# filled, like the training sample is read, in blocks of READ_BLOCK rows (24 MB): less peak RSS, same index.
ADD_CHUNK = 65536
READ_BLOCK = 16384
TRAIN_SAMPLE = 100_000
# settings of the index built from the vectors, not of the vectors: a build with other ones re-uses what was encoded
INDEX_SETTINGS = ("factory", "backend")


def instruction_hash(embedder: Any, task: str) -> str:
    """Hash of the instructions this embedder actually applies for ``task`` (empty without instructions)."""
    text = embedder.instruction(task, "query") + "\x00" + embedder.instruction(task, "key")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_max_length(embedder: Any) -> int | None:
    """The tokens of a document the embedder keeps (None for an embedder that does not say)."""
    length = getattr(embedder, "key_max_length", None)
    return None if length is None else int(length)


def compose_text(record: dict, field: str, template: str | None, where: str) -> str:
    """The text to embed: ``template.format(**record)`` or ``record[field]``; errors name file:line:field."""
    if template:
        text = fill_template(template, record, where, "the template")
        if not text.strip():
            raise DataError(f"{where}: the template {template!r} gives an empty text")
        return text.strip()
    if field not in record:
        raise DataError(f"{where}: missing field {field!r}")
    if not isinstance(record[field], str):
        raise DataError(f"{where}: field {field!r} must be a string, got {type(record[field]).__name__}")
    if what := blank_kind(record[field]):  # it would be embedded as the instruction alone, a vector near every query
        others = set(record) - {field, "id"}
        hint = " (a --template such as '{title} {text}' can join other fields)" if others else ""
        raise DataError(f"{where}: field {field!r} {what}{hint}")
    return record[field]


def iter_records(corpus: str | Path | Iterable[str | dict]) -> Iterator[tuple[str, dict]]:
    """(location, record) from a JSONL path or an iterable of strings / dicts."""
    if isinstance(corpus, str | Path):
        for line_no, record in iter_jsonl(corpus):
            yield f"{corpus}:{line_no}", record
        return
    for i, item in enumerate(corpus):
        if isinstance(item, str):
            yield f"documents[{i}]", {"text": item}
        elif isinstance(item, dict):
            yield f"documents[{i}]", item
        else:
            raise DataError(f"documents[{i}]: expected a string or a dict, got {type(item).__name__}")


def doc_line(doc: dict, where: str) -> bytes:
    """A document as its docs.jsonl line. A value JSON cannot store (a date, a set, NaN or infinity: written as
    Python's NaN it made search's output no JSON and the server's answer a 500) is refused naming its field, so
    that callers can check a batch before writing any of it."""
    try:
        return (json.dumps(doc, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as err:  # ValueError: a circular reference, a lone surrogate, NaN
        for key, value in doc.items():
            try:
                json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
            except (TypeError, ValueError) as bad:
                if "JSON compliant" in str(bad):
                    raise DataError(f"{where}: field {key!r} holds NaN or infinity, which JSON cannot store (give "
                                    "a finite number, or null)") from None
                raise DataError(f"{where}: field {key!r} cannot be stored as JSON (a {type(value).__name__}; give it "
                                "as a string, number, boolean, list or dict)") from None
        raise DataError(f"{where}: the document cannot be stored as JSON ({err})") from None


def iter_doc_lines(corpus: Any, field: str, template: str | None) -> Iterator[tuple[str, dict, bytes]]:
    """(location, document, its docs.jsonl line) for each record: the text composed and checked."""
    for where, record in iter_records(corpus):
        doc = dict(record)
        doc["text"] = compose_text(record, field, template, where)
        yield where, doc, doc_line(doc, where)


def documents_fingerprint(corpus: Any, field: str, template: str | None) -> dict:
    """In-memory documents by content: the SHA-256 of their docs.jsonl lines, streamed (nothing is kept)."""
    digest = hashlib.sha256()
    for _, _, line in iter_doc_lines(corpus, field, template):
        digest.update(line)
    return {"sha256": digest.hexdigest()}


def docs_file_fingerprint(path: Path) -> dict | None:
    """The documents a build wrote, fingerprinted as ``documents_fingerprint`` does (None without the file)."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return {"sha256": digest.hexdigest()}


def corpus_fingerprint(corpus: Any) -> dict | None:
    """A corpus file by path, size and time; None for in-memory documents (see ``documents_fingerprint``)."""
    if isinstance(corpus, str | Path):
        stat = Path(corpus).stat()
        return {"path": str(Path(corpus).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return None


def same_documents(corpus: str | Path, out_dir: Path, field: str, template: str | None) -> bool:
    """Whether a corpus file gives exactly the documents a build wrote to docs.jsonl (read once more: for a file
    whose size, time or path differs from the recorded ones). A record it cannot read is another corpus."""
    try:
        return documents_fingerprint(corpus, field, template) == docs_file_fingerprint(out_dir / DOCS_FILE)
    except DataError:
        return False


def write_docs(corpus: Any, out_dir: Path, field: str, template: str | None,
               filter_fields: Iterable[str] = (), allow_empty: bool = False) -> tuple[int, dict]:
    """Stream records into docs.jsonl + docs.offsets (via temp files); returns the document count and the
    documents' ``documents_fingerprint``. A named
    filter field that no document holds is refused before anything is encoded: every filter on it would match
    nothing. So is a corpus without documents unless ``allow_empty``. Refused data leaves no file behind, so
    that the same command with the data fixed runs (an interruption leaves the temp files, which mark the
    folder as an index build's)."""
    filter_fields = tuple(filter_fields)
    docs_tmp, offsets_tmp = out_dir / (DOCS_FILE + ".tmp"), out_dir / (OFFSETS_FILE + ".tmp")
    count, offset, digest = 0, 0, hashlib.sha256()
    unseen = set(filter_fields) - {"*"}
    try:
        with docs_tmp.open("wb") as docs, offsets_tmp.open("wb") as offsets:
            for where, doc, line in iter_doc_lines(corpus, field, template):
                stored = filterable(doc, filter_fields, where) if filter_fields else {}
                if unseen:
                    unseen -= set(stored)
                docs.write(line)
                digest.update(line)
                offsets.write(np.int64(offset).tobytes())
                offset += len(line)
                count += 1
        if count == 0 and not allow_empty:
            raise DataError(f"{corpus}: no documents to index")
        if unseen and count:
            missing = ", ".join(map(repr, sorted(unseen)))
            raise DataError(f"filter field {missing}: no document has it (as a string, number or boolean); "
                            "check the name against the corpus's fields")
    except DataError:
        docs_tmp.unlink(missing_ok=True)
        offsets_tmp.unlink(missing_ok=True)
        raise
    os.replace(offsets_tmp, out_dir / OFFSETS_FILE)
    os.replace(docs_tmp, out_dir / DOCS_FILE)
    return count, {"sha256": digest.hexdigest()}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def filterable(doc: dict, fields: Iterable[str], where: str | None = None) -> dict:
    """The fields of a document stored in the index for filtering (``"*"``: every scalar field).

    An integer outside int64 is refused (naming ``where`` and the field), by every backend alike: Milvus stores
    none, and said so only after the whole corpus was encoded, naming nothing."""
    fields = tuple(fields)
    if "*" in fields:  # the fields a filter can name (not the index's own id and vector)
        fields = tuple(k for k in doc if k != "text" and is_filter_field(k))
    stored = {f: doc[f] for f in fields if f in doc and isinstance(doc[f], str | int | float | bool)}
    for name, value in stored.items():
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise DataError(f"{where or 'a document'}: field {name!r} holds the integer {value}, outside the 64-bit "
                            "range a filter field can hold; give it as a string, or leave the field out of the "
                            "filter fields")
    return stored


def read_progress(out_dir: Path) -> dict | None:
    path = out_dir / PROGRESS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None  # a torn progress file: start over rather than trust it


def write_progress(out_dir: Path, state: dict) -> None:
    with atomic_write(out_dir / PROGRESS_FILE) as handle:
        json.dump(state, handle, indent=2)


def encode_rows(embedder: Any, task: str, out_dir: Path, state: dict, batch_size: int, progress: bool) -> None:
    """Encode docs.jsonl rows [rows_done, count) into the memmap, recording progress after each batch."""
    count, dim = state["count"], state["settings"]["dim"]
    path = out_dir / EMBEDDINGS_FILE
    if count == 0:
        path.write_bytes(b"")
        return
    mode = "r+" if path.exists() and path.stat().st_size == count * dim * 4 else "w+"
    if mode == "w+":
        state["rows_done"] = 0
    if mode == "w+":  # allocate the file; rows are written through a file handle, not a mapping, so the
        with path.open("wb") as handle:  # written pages sit in the page cache, not in this process's RSS
            handle.truncate(count * dim * 4)
    start = state["rows_done"]
    offsets = np.memmap(out_dir / OFFSETS_FILE, dtype=np.int64, mode="r")
    # a log says the encoding started: a corpus of one batch would say nothing else until it was encoded
    bar_or_lines = count_progress(progress, log_start=True)
    with (out_dir / DOCS_FILE).open("rb") as docs, path.open("r+b") as vectors, bar_or_lines as bar:
        job = bar.add_task(f"encoding {task} keys", total=count, completed=start)
        if start < count:
            docs.seek(int(offsets[start]))
        while start < count:
            end = min(start + batch_size, count)
            texts = [json.loads(docs.readline())["text"] for _ in range(start, end)]
            batch = embedder.encode_keys(texts, task, batch_size=batch_size, show_progress=False)
            vectors.seek(start * dim * 4)
            vectors.write(np.ascontiguousarray(batch, dtype=np.float32).tobytes())
            vectors.flush()
            state["rows_done"] = start = end
            write_progress(out_dir, state)
            bar.update(job, completed=end)


def read_rows(path: Path, rows: np.ndarray, count: int, dim: int) -> np.ndarray:
    """Rows (sorted ids) of the float32 embeddings file, read in copied blocks: a memmap would keep every
    touched page resident, and a random training sample touches nearly all of them."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    filled = 0
    for lo in range(0, count, READ_BLOCK):
        hi = min(lo + READ_BLOCK, count)
        wanted = rows[(rows >= lo) & (rows < hi)]
        if len(wanted):
            block = np.fromfile(path, dtype=np.float32, count=(hi - lo) * dim, offset=lo * dim * 4).reshape(-1, dim)
            out[filled : filled + len(wanted)] = block[wanted - lo]
            filled += len(wanted)
    return out


def build_vector_index(
    out_dir: Path, state: dict, backend: str, factory: str, filter_fields: tuple[str, ...], seed: int = 0
) -> str:
    """Build the FAISS / Milvus index from the memmap, in chunks; returns the index file name."""
    from llm_embedder.index.faiss_index import FaissIndex

    count, dim = state["count"], state["settings"]["dim"]
    if backend == "milvus":
        from llm_embedder.index.milvus_index import MilvusIndex

        shutil.rmtree(out_dir / MILVUS_DB, ignore_errors=True)  # derived data: rebuilt from the memmap
        index: Any = MilvusIndex(out_dir / MILVUS_DB, dim, factory=factory)
        name = MILVUS_FILE
    elif backend == "faiss":
        index = FaissIndex(dim, factory)
        name = FAISS_FILE
        if count and not index.is_trained:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(count, size=min(count, TRAIN_SAMPLE), replace=False))
            sample = read_rows(out_dir / EMBEDDINGS_FILE, rows, count, dim)
            index.train(sample, copy=False)  # normalised in place: no second copy of the sample
            del sample
    else:
        raise ValueError(f"backend must be faiss or milvus, got {backend!r}")
    add_options = {"copy": False} if backend == "faiss" else {}
    step = READ_BLOCK if backend == "faiss" and "HNSW" not in factory.upper() else ADD_CHUNK
    docs = (out_dir / DOCS_FILE).open("rb") if filter_fields else None
    stored: set[str] = set()
    try:
        for lo in range(0, count, step):
            hi = min(lo + step, count)
            metadata = None
            if docs is not None:
                records = [json.loads(docs.readline()) for _ in range(lo, hi)]
                metadata = [filterable(r, filter_fields, f"{out_dir / DOCS_FILE}:{lo + i + 1}")
                            for i, r in enumerate(records)]
                stored.update(key for item in metadata for key in item)
            chunk = np.fromfile(out_dir / EMBEDDINGS_FILE, dtype=np.float32, count=(hi - lo) * dim, offset=lo * dim * 4)
            # a copied block, not a memmap (whose touched pages would stay resident), handed over to the index
            # (FAISS normalises it in place instead of copying it again)
            index.add(np.arange(lo, hi), chunk.reshape(hi - lo, dim), metadata, **add_options)
        index.save(out_dir / name)
    finally:
        if docs is not None:
            docs.close()
        index.close()
    return name, sorted(stored)


def corpus_change(corpus: Any, recorded: Any) -> str:
    """How ``corpus`` differs from the corpus a build recorded, in words."""
    if not isinstance(corpus, str | Path):
        return "other documents"
    if isinstance(recorded, dict) and recorded.get("path") == str(Path(corpus).resolve()):
        return f"{corpus} changed since: its documents differ"
    if isinstance(recorded, dict) and "path" in recorded:
        return f"it was built from {recorded['path']}"
    return "it was built from in-memory documents"


def check_index_settings(embedder: Any, backend: str, factory: str, batch_size: int) -> None:
    """Refuse a bad backend, factory string or batch size before any document is encoded."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_factory(factory, backend, int(embedder.dim))


def check_factory(factory: str, backend: str, dim: int) -> None:
    """Refuse a backend, or a factory string for vectors of ``dim`` (``PQ32`` needs a multiple of 32), that the
    build would refuse; the command line checks it with the dimension the model's configs give, before it loads
    (``models.config_embedding_dim``)."""
    from llm_embedder.index.faiss_index import FaissIndex

    if backend not in ("faiss", "milvus"):
        raise ValueError(f"backend must be faiss or milvus, got {backend!r}")
    if backend == "faiss":
        FaissIndex(dim, factory).close()  # an empty index: parses the factory string, allocates nothing
    else:  # the build writes a Milvus Lite database; the factory maps to its index or is refused
        from llm_embedder.extras import require_extra
        from llm_embedder.index.milvus_index import check_milvus_factory

        require_extra("milvus", "the Milvus backend")  # before any document is encoded

        check_milvus_factory(factory, dim, lite=True)


def check_trainable(factory: str, dim: int, count: int) -> None:
    """Refuse, before any document is encoded, a factory whose training FAISS would refuse for ``count``
    documents (an IVF with more lists than vectors, a PQ with more centroids): the count FAISS itself requires
    of each part (``FaissIndex.training_needs``), for the sample the build trains on. The Milvus backend builds
    the same structures from the same factory strings, and is held to the same rule."""
    from llm_embedder.index.faiss_index import FaissIndex

    if count == 0:
        return
    needs = FaissIndex(dim, factory).training_needs()
    sample = min(count, TRAIN_SAMPLE)
    short = [(points, part) for points, part in needs or [] if points > sample]
    if short:
        points, part = max(short)
        docs = f"{count} documents" if sample == count else f"a sample of {sample} documents"
        raise ValueError(f"factory {factory!r} cannot be trained on {docs}: its {part} needs at least {points} "
                         "training vectors; use a smaller factory (e.g. Flat or HNSW32) on the same output, which "
                         "re-uses the documents and vectors encoded so far, or index more documents")


def build_index(
    corpus: str | Path | Iterable[str | dict],
    out_dir: str | Path,
    embedder: Any,
    task: str,
    *,
    factory: str = "Flat",
    backend: str = "faiss",
    field: str = "text",
    template: str | None = None,
    batch_size: int = 256,
    filter_fields: Iterable[str] = (),
    progress: bool = True,
    option: str = "--out",
    on_encode: Callable[[], None] | None = None,
) -> dict:
    """Encode a corpus for ``task`` into ``out_dir`` and index it; re-running continues an interrupted build.

    ``filter_fields`` names the document fields stored in the index for ``search(filter=...)`` (``"*"``:
    all scalar fields; keep it small for big corpora, FAISS holds them in memory).

    Returns the metadata written to meta.json. A directory holding a build with other settings (model,
    task, instructions, document tokens, corpus, factory) is refused rather than mixed. A corpus file is known
    by path, size and time, and where those differ by its documents (touched, copied or moved, it is the same
    corpus); in-memory documents by content (``documents_fingerprint``). ``option`` names
    ``out_dir`` in messages. ``on_encode`` is called once every check has passed, before the documents are encoded
    (not for a finished build, which is returned as it is).
    """
    from llm_embedder.tasks import get_task

    get_task(task)
    filter_fields = check_filter_fields(filter_fields)  # a set of fields: given in another order, the same build
    check_index_settings(embedder, backend, factory, batch_size)
    if template:
        check_template(template, "the template")
    # docs.offsets too: a build cut after moving its document files in place, before recording its progress
    markers = (PROGRESS_FILE, OFFSETS_FILE, DOCS_FILE + ".tmp", OFFSETS_FILE + ".tmp")
    out_dir = check_output_dir(out_dir, markers, "an index build", option)
    # a second build into the same folder (the command started again while it runs) is refused; the lock makes the
    # folder, and removes it again if a refused build leaves it empty (one made before it is kept)
    with exclusive(out_dir / LOCK_FILE, f"the index build {out_dir}"):
        out_dir.mkdir(parents=True, exist_ok=True)  # where the OS has no flock, exclusive makes nothing
        settings = {
            "model": embedder.name, "model_path": str(Path(embedder.path).resolve()), "task": task,
            "instruction_hash": instruction_hash(embedder, task), "key_max_length": key_max_length(embedder),
            "dim": int(embedder.dim), "factory": factory,
            "backend": backend, "field": field, "template": template, "filter_fields": list(filter_fields),
            # the weight files (sizes, times): a model retrained in place does not resume, or re-use, its old vectors
            "model_version": model_version(embedder.path),
        }
        in_memory = not isinstance(corpus, str | Path)
        fingerprint = corpus_fingerprint(corpus)
        state = read_progress(out_dir)
        resumable = state is not None and bool(state.get("docs_done"))
        if in_memory and resumable:  # read once more here; a build re-used or resumed does not read them again
            fingerprint = documents_fingerprint(corpus, field, template)
        old = state.get("settings", {}) if state is not None else {}
        if isinstance(old.get("filter_fields"), list):  # recorded in the order given before this version
            old = {**old, "filter_fields": sorted(set(old["filter_fields"]))}
        # a build from before the document length was recorded: the same build if all else matches and it finished
        # (nothing is encoded again); an unfinished one cannot say at which length its rows were encoded
        legacy = state is not None and "key_max_length" not in old
        # one from before the weights were recorded is compared without them
        compared = as_recorded(settings, old, ("key_max_length", "model_version"))
        # the vectors do not depend on the index built from them: another factory or backend re-uses the documents
        # and vectors a build wrote (finished or not) and builds only the index again; a build that did not record
        # all it was made with (an earlier version's) is not taken for one of these settings
        recorded_all = state is not None and set(settings) <= set(old)
        reindex = [k for k in INDEX_SETTINGS if recorded_all and old.get(k) != compared[k]]
        old = {**old, **{k: compared[k] for k in reindex}}
        if legacy and old == compared and not state.get("done"):
            raise ValueError(
                f"{out_dir} holds an unfinished build from an earlier version, which did not record how many tokens "
                f"of a document it kept; use another {option} or delete it"
            )
        if state is not None and old != compared:
            diff = [k for k in compared if old.get(k) != compared[k]] or ["settings"]
            if diff == ["model_version"]:
                diff = ["model weights (the model's weight files changed since: retrained in place?)"]
            raise ValueError(
                f"{out_dir} holds a build with different {', '.join(diff)}; use another {option} or delete it"
            )
        recorded = state.get("corpus") if state is not None else None
        if in_memory and resumable and recorded is None:
            # recorded before in-memory documents were fingerprinted: a finished build is re-used as before; an
            # unfinished one is checked against the documents it wrote
            recorded = fingerprint if state.get("done") else docs_file_fingerprint(out_dir / DOCS_FILE)
        if state is not None and recorded != fingerprint and not in_memory and resumable \
                and same_documents(corpus, out_dir, field, template):
            # touched, copied or moved with the same records: this build is the corpus's, and known by its new stat
            recorded = state["corpus"] = fingerprint
            write_progress(out_dir, state)
        if state is not None and recorded != fingerprint:
            raise ValueError(f"{out_dir} holds a build of a different corpus ({corpus_change(corpus, recorded)}); use "
                             f"another {option} or delete it")
        if reindex:
            if state.get("done") and state.get("built") != built_files(out_dir, state["settings"]["backend"]):
                raise ValueError(f"{out_dir} holds a build with different {', '.join(reindex)}, changed since it was "
                                 "built (documents added or deleted, or built by an earlier version), so its index "
                                 f"cannot be built again from what the build wrote; use another {option} or delete it")
            check_trainable(factory, int(embedder.dim), int(state.get("count", 0)))  # before the old index goes
            (out_dir / META_FILE).unlink(missing_ok=True)  # first: a folder with meta.json is a finished build
            for name in (FAISS_FILE, FAISS_FILE + ".meta.json", MILVUS_FILE, DELETED_FILE):
                (out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(out_dir / MILVUS_DB, ignore_errors=True)
            state = {**state, "settings": {**state["settings"], **{k: settings[k] for k in reindex}}, "done": False}
            write_progress(out_dir, state)
        if state is not None and state.get("done") and (out_dir / META_FILE).exists():
            return json.loads((out_dir / META_FILE).read_text(encoding="utf-8"))
        if state is None or not state.get("docs_done"):
            (out_dir / META_FILE).unlink(missing_ok=True)
            (out_dir / DELETED_FILE).unlink(missing_ok=True)  # deletions of an earlier build's ids
            # (an in-memory Retriever may start empty)
            count, content = write_docs(corpus, out_dir, field, template, filter_fields, allow_empty=in_memory)
            state = {"settings": settings, "corpus": content if in_memory else fingerprint, "docs_done": True,
                     "count": count, "rows_done": 0}
            write_progress(out_dir, state)
        # the documents are counted: a factory that cannot be trained on them is refused before they are encoded
        check_trainable(factory, int(embedder.dim), state["count"])
        if on_encode is not None:
            on_encode()
        encode_rows(embedder, task, out_dir, state, batch_size, progress)
        index_file, stored = build_vector_index(out_dir, state, backend, factory, tuple(filter_fields))
        # the fields some document holds: a filter on another one (a typo, under "*") is refused, not empty
        meta = {**settings, "count": state["count"], "index_file": index_file, "stored_fields": stored}
        with atomic_write(out_dir / META_FILE) as handle:
            json.dump(meta, handle, indent=2)
        state["done"] = True
        state["built"] = built_files(out_dir, backend)  # what a later build with another factory checks
        write_progress(out_dir, state)
        return meta


def built_files(out_dir: Path, backend: str) -> dict | None:
    """The identity of a finished build's document offsets and index file (size; inode, size, time), and the size of
    its deletion journal once there is one: a later ``Retriever.add`` changes the offsets, a ``delete`` the index
    (Milvus) or the journal (FAISS), and a build with another factory then refuses to build the index again from the
    build's own documents and vectors, which would drop what was added and bring back what was deleted."""
    index = out_dir / (MILVUS_FILE if backend == "milvus" else FAISS_FILE)
    try:
        stat = index.stat()
        offsets = (out_dir / OFFSETS_FILE).stat().st_size
    except FileNotFoundError:
        return None
    built = {"offsets_size": offsets, "index": [stat.st_ino, stat.st_size, stat.st_mtime_ns]}
    if (out_dir / DELETED_FILE).exists():  # not recorded by a build (it has none): a journal means a delete since
        built["deleted_size"] = (out_dir / DELETED_FILE).stat().st_size
    return built
