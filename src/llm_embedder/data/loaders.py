"""Loaders for the paper's own data formats, converted into the suite's record format and validated.

- FlagEmbedding JSONL (recipe §2.8): train/eval records, optionally with a corpus whose keys are built with a
  key template ("{title} {text}" by default); ``qid`` is accepted for ``query_id``; the task is read from the
  first record when a record lacks it.
- BEIR folders: ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text), ``qrels/<split>.tsv``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from llm_embedder.data.common import Record
from llm_embedder.data.validate import check_records
from llm_embedder.io import DataError, iter_jsonl


class _Fields(dict):
    def __missing__(self, key: str) -> str:
        return ""


def format_key(entry: dict[str, Any], template: str = "{title} {text}") -> str:
    """A corpus entry as key text; absent fields are empty and surrounding blanks are trimmed."""
    return template.format_map(_Fields(entry)).strip()


def load_corpus(path: str | Path) -> list[Record]:
    """A JSONL corpus; entry i is line i (an ``id`` field, if any, is kept as ``source_id`` when it differs)."""
    corpus = []
    for position, (line, record) in enumerate(iter_jsonl(path)):
        if not any(isinstance(record.get(f), str) for f in ("text", "contents", "title")):
            raise DataError(f"{path}:{line}:text: corpus entry has no text, contents or title")
        entry = dict(record)
        if "id" in entry and entry["id"] != position:
            entry["source_id"] = entry["id"]
        entry["id"] = position
        corpus.append(entry)
    return corpus


def load_flag_jsonl(
    path: str | Path,
    corpus: list[Record] | str | Path | None = None,
    key_template: str = "{title} {text}",
    task: str | None = None,
) -> list[Record]:
    """FlagEmbedding train/eval records with pos/neg texts filled from ``*_index`` via the corpus, validated."""
    if corpus is not None and not isinstance(corpus, list):
        corpus = load_corpus(corpus)
    records: list[Record] = []
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
                if field not in record and ids is not None and corpus is not None:
                    try:
                        record[field] = [format_key(corpus[i], key_template) for i in ids]
                    except (IndexError, TypeError):
                        message = f"{path}:{line}:{field}_index: ids {ids} not in a corpus of {len(corpus)}"
                        raise DataError(message) from None
                record.setdefault(field, [])
        records.append(record)
    check_records(records, str(path), len(corpus) if corpus is not None else None)
    return records


def _read_tsv(path: Path) -> list[tuple[int, list[str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [(i, row) for i, row in enumerate(csv.reader(handle, delimiter="\t"), start=1) if row]


def load_beir(
    folder: str | Path, split: str = "test", task: str = "qa", key_template: str = "{title} {text}"
) -> tuple[list[Record], list[Record]]:
    """A BEIR folder as (records, corpus): one record per query with qrels, positives = docs with score > 0."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise FileNotFoundError(f"BEIR qrels not found: {qrels_path}")
    corpus: list[Record] = []
    doc_ids: dict[str, int] = {}
    for line, record in iter_jsonl(folder / "corpus.jsonl"):
        if "_id" not in record or not isinstance(record.get("text"), str):
            raise DataError(f"{folder / 'corpus.jsonl'}:{line}:_id/text: BEIR corpus lines need _id and text")
        doc_ids[str(record["_id"])] = len(corpus)
        corpus.append({"id": len(corpus), "title": str(record.get("title") or ""), "text": record["text"],
                       "doc_id": str(record["_id"])})
    queries: dict[str, str] = {}
    for line, record in iter_jsonl(folder / "queries.jsonl"):
        if "_id" not in record or not isinstance(record.get("text"), str):
            raise DataError(f"{folder / 'queries.jsonl'}:{line}:_id/text: BEIR query lines need _id and text")
        queries[str(record["_id"])] = record["text"]
    relevant: dict[str, list[int]] = {}
    for line, row in _read_tsv(qrels_path):
        if line == 1 and row[0] == "query-id":
            continue
        if len(row) < 3:
            raise DataError(f"{qrels_path}:{line}: expected query-id, corpus-id, score")
        query_id, doc_id, score = row[0], row[1], row[2]
        if query_id not in queries:
            raise DataError(f"{qrels_path}:{line}:query-id: unknown query {query_id!r}")
        if doc_id not in doc_ids:
            raise DataError(f"{qrels_path}:{line}:corpus-id: unknown document {doc_id!r}")
        try:
            relevant.setdefault(query_id, [])
            if float(score) > 0 and doc_ids[doc_id] not in relevant[query_id]:
                relevant[query_id].append(doc_ids[doc_id])
        except ValueError:
            raise DataError(f"{qrels_path}:{line}:score: not a number: {score!r}") from None
    records = []
    for source_id, ids in relevant.items():
        records.append({
            "query": queries[source_id], "task": task, "query_id": len(records), "source_id": source_id,
            "pos": [format_key(corpus[i], key_template) for i in ids], "neg": [], "answers": [],
            "pos_index": ids,
        })
    check_records(records, str(qrels_path), len(corpus))
    return records, corpus
