"""Loaders for the paper's own data formats, converted into the suite's record format and validated.

- FlagEmbedding JSONL (recipe §2.8): train/eval records, optionally with a corpus whose keys are built with a
  key template ("{title} {text}" by default); ``qid`` is accepted for ``query_id``; the task is read from the
  first record when a record lacks it.
- BEIR folders: ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text), ``qrels/<split>.tsv``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_embedder.data.common import Record
from llm_embedder.data.validate import raise_problems, validate_records
from llm_embedder.io import DataError, check_template, iter_jsonl


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return ""


def format_key(entry: dict[str, Any], template: str = "{title} {text}") -> str:
    """A corpus entry as key text; absent or null fields are empty and surrounding blanks are trimmed."""
    return template.format_map(_Fields({k: v for k, v in entry.items() if v is not None})).strip()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_key_template(template: str, corpus: list[Record]) -> None:
    """Refuse a key template that is no record template, or whose fields no corpus entry has (every key empty)."""
    fields = check_template(template, "key_template")
    if corpus and not any(field in entry for entry in corpus for field in fields):
        present = sorted({key for entry in corpus for key in entry})
        raise ValueError(f"key_template {template!r}: no corpus entry has {', '.join(map(repr, fields))} "
                         f"(the entries have {', '.join(present)})")


def _key(entry: Record, template: str, where: str) -> str:
    """``format_key`` of one corpus entry; an empty key or a format spec that does not fit names ``where``."""
    try:
        key = format_key(entry, template)
    except (ValueError, TypeError) as err:  # e.g. {text:d}
        raise DataError(f"{where}: key_template {template!r}: {err}") from None
    if not key:
        raise DataError(f"{where}: empty key under key_template {template!r}")
    return key


def _load_corpus_lines(path: str | Path) -> tuple[list[Record], list[int]]:
    corpus, lines = [], []
    for position, (line, record) in enumerate(iter_jsonl(path)):
        if not any(isinstance(record.get(f), str) for f in ("text", "contents", "title")):
            raise DataError(f"{path}:{line}:text: corpus entry has no text, contents or title")
        entry = dict(record)
        if "id" in entry and entry["id"] != position:
            entry["source_id"] = entry["id"]
        entry["id"] = position
        corpus.append(entry)
        lines.append(line)
    if not corpus:
        raise DataError(f"{path}: no records")
    return corpus, lines


def load_corpus(path: str | Path) -> list[Record]:
    """A JSONL corpus; entry i is line i (an ``id`` field, if any, is kept as ``source_id`` when it differs)."""
    return _load_corpus_lines(path)[0]


def load_flag_jsonl(
    path: str | Path,
    corpus: list[Record] | str | Path | None = None,
    key_template: str = "{title} {text}",
    task: str | None = None,
) -> list[Record]:
    """FlagEmbedding train/eval records with pos/neg texts filled from ``*_index`` via the corpus, validated."""
    corpus_lines: list[int] | None = None
    corpus_name = "corpus"
    if corpus is not None and not isinstance(corpus, list):
        corpus_name = str(corpus)
        corpus, corpus_lines = _load_corpus_lines(corpus)
    if corpus is not None:
        _check_key_template(key_template, corpus)
    keys: dict[int, str] = {}

    def key(i: int, used_by: str) -> str:
        if i not in keys:
            where = f"{corpus_name}:{corpus_lines[i]}" if corpus_lines else f"{corpus_name} entry {i}"
            keys[i] = _key(corpus[i], key_template, f"{where} (used by {used_by})")
        return keys[i]

    records: list[tuple[int, Record]] = []
    default_task = task
    for line, raw in iter_jsonl(path):
        record = dict(raw)
        if "query_id" not in record and "qid" in record:
            record["query_id"] = record.pop("qid")
        record.setdefault("query_id", len(records))
        if default_task is None:
            default_task = record.get("task")
            if default_task is None:
                raise DataError(f"{path}:{line}:task: the first record must name its task (or pass task=...)")
        record.setdefault("task", default_task)
        if "history" not in record:
            for field in ("pos", "neg"):
                ids = record.get(f"{field}_index")
                where = f"{path}:{line}:{field}_index"
                if field not in record and ids is not None:
                    if not isinstance(ids, list) or not all(_is_int(i) for i in ids):
                        raise DataError(f"{where}: must be a list of integers, got {ids!r}")
                    if corpus is not None:
                        outside = [i for i in ids if not 0 <= i < len(corpus)]
                        if outside:
                            raise DataError(f"{where}: ids {outside} not in a corpus of {len(corpus)}")
                        record[field] = [key(i, where) for i in ids]
                    elif not (field == "pos" and isinstance(record.get("neg"), list)):  # pos_index into neg is fine
                        raise DataError(f"{where}: the record gives corpus ids but no `{field}` texts, and no corpus "
                                        "was passed (load_flag_jsonl(..., corpus=...))")
                record.setdefault(field, [])
        records.append((line, record))
    if not records:
        raise DataError(f"{path}: no records")
    raise_problems(validate_records(records, str(path), len(corpus) if corpus is not None else None), str(path))
    return [record for _, record in records]


def _read_table(path: Path, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, row) for each non-empty row of a CSV/TSV file; a BOM is dropped, bad UTF-8 names the file."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not valid UTF-8 after line {reader.line_num} ({err.reason})") from None
            except csv.Error as err:
                raise DataError(f"{path}:{start}: {err}") from None
            if any(cell.strip() for cell in row):
                yield start, row


def _read_beir_jsonl(path: Path, what: str) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, int]]:
    """The lines of a BEIR corpus/queries file, with the position of each ``_id``; a repeated ``_id`` is refused."""
    rows: list[tuple[int, dict[str, Any]]] = []
    positions: dict[str, int] = {}
    for line, record in iter_jsonl(path):
        if "_id" not in record or not isinstance(record.get("text"), str):
            raise DataError(f"{path}:{line}:_id/text: BEIR {what} lines need _id and text")
        source_id = str(record["_id"])
        if source_id in positions:
            first = rows[positions[source_id]][0]
            raise DataError(f"{path}:{line}:_id: duplicate _id {source_id!r} (first on line {first})")
        positions[source_id] = len(rows)
        rows.append((line, record))
    return rows, positions


def load_beir(
    folder: str | Path, split: str = "test", task: str = "qa", key_template: str = "{title} {text}"
) -> tuple[list[Record], list[Record]]:
    """A BEIR folder as (records, corpus): one record per query with qrels, positives = docs with score > 0."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise FileNotFoundError(f"BEIR qrels not found: {qrels_path}")
    check_template(key_template, "key_template")
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    docs, doc_ids = _read_beir_jsonl(corpus_path, "corpus")
    corpus: list[Record] = []
    for line, record in docs:
        title = str(record.get("title") or "")
        if not record["text"].strip() and not title.strip():
            raise DataError(f"{corpus_path}:{line}:text: empty, and no title")
        corpus.append({"id": len(corpus), "title": title, "text": record["text"], "doc_id": str(record["_id"])})
    _check_key_template(key_template, corpus)
    queries, query_ids = _read_beir_jsonl(queries_path, "query")
    relevant: dict[str, list[int]] = {}
    for line, row in _read_table(qrels_path, "\t"):
        if line == 1 and row[0] == "query-id":
            continue
        if len(row) < 3:
            raise DataError(f"{qrels_path}:{line}: expected query-id, corpus-id, score")
        query_id, doc_id, score = row[0], row[1], row[2]
        if query_id not in query_ids:
            raise DataError(f"{qrels_path}:{line}:query-id: unknown query {query_id!r}")
        if doc_id not in doc_ids:
            raise DataError(f"{qrels_path}:{line}:corpus-id: unknown document {doc_id!r}")
        try:
            relevant.setdefault(query_id, [])
            if float(score) > 0 and doc_ids[doc_id] not in relevant[query_id]:
                relevant[query_id].append(doc_ids[doc_id])
        except ValueError:
            raise DataError(f"{qrels_path}:{line}:score: not a number: {score!r}") from None
    if not relevant:
        raise DataError(f"{qrels_path}: no records (no query-id, corpus-id, score rows)")
    records: list[tuple[int, Record]] = []
    for source_id, ids in relevant.items():
        line, query = queries[query_ids[source_id]]
        if not query["text"].strip():
            raise DataError(f"{queries_path}:{line}:text: empty query (_id {source_id!r})")
        pos = [_key(corpus[i], key_template, f"{corpus_path}:{docs[i][0]}") for i in ids]
        records.append((line, {
            "query": query["text"], "task": task, "query_id": len(records), "source_id": source_id,
            "pos": pos, "neg": [], "answers": [], "pos_index": ids,
        }))
    raise_problems(validate_records(records, str(queries_path), len(corpus)), str(queries_path))
    return [record for _, record in records], corpus

