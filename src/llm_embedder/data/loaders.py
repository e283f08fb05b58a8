"""Loaders for the paper's own data formats, converted into the suite's record format and validated.

- FlagEmbedding JSONL (recipe §2.8): train/eval records, optionally with a corpus whose keys are built with a
  key template ("{title} {text}" by default); ``qid`` is accepted for ``query_id``; the task is read from the
  first record when a record lacks it.
- BEIR folders: ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text), ``qrels/<split>.tsv`` (a query
  with no relevant document is left out, with a warning).
- MMLU-style and PopQA-style question files (``load_mmlu``, ``load_popqa``): qa evaluation records (query,
  answers, no candidates: retrieval comes from a corpus at evaluation time).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llm_embedder.data.common import Record
from llm_embedder.data.validate import raise_problems, validate_records
from llm_embedder.io import (
    DataError,
    check_template,
    check_template_values,
    decode_line,
    is_digit_limit,
    iter_jsonl,
    require_file,
    too_many_digits,
)

# told the bytes of each line read from an input file, as it is read (``data import``'s progress bar)
OnRead = Callable[[int], None] | None


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
    """``format_key`` of one corpus entry; an empty key, a list or an object in a field it names, or a format spec
    that does not fit names ``where``."""
    check_template_values(template, entry, where, "key_template")
    try:
        key = format_key(entry, template)
    except (ValueError, TypeError) as err:  # e.g. {text:d}
        raise DataError(f"{where}: key_template {template!r}: {err}") from None
    if not key:
        raise DataError(f"{where}: empty key under key_template {template!r}")
    return key


TEXT_FIELDS = ("title", "text", "contents")  # what a corpus entry's key is made of: each a string where given


def _optional_string(value: Any, where: str, field: str) -> str | None:
    """``value`` of a field that may be absent or null, else must be a string (a list was written into keys as its
    repr); refused naming ``where`` (file:line) and the field."""
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}:{field}: must be a string, got {type(value).__name__}")
    return value


def _load_corpus_lines(path: str | Path, on_read: OnRead = None) -> tuple[list[Record], list[int]]:
    corpus, lines = [], []
    for position, (line, record) in enumerate(iter_jsonl(path, on_read=on_read)):
        if not any(isinstance(record.get(f), str) for f in ("text", "contents", "title")):
            raise DataError(f"{path}:{line}:text: corpus entry has no text, contents or title")
        for field in TEXT_FIELDS:  # null is empty, as format_key reads it
            _optional_string(record.get(field), f"{path}:{line}", field)
        entry = dict(record)
        if "id" in entry and entry["id"] != position:
            entry["source_id"] = entry["id"]
        entry["id"] = position
        corpus.append(entry)
        lines.append(line)
    if not corpus:
        raise DataError(f"{path}: no records")
    return corpus, lines


def load_corpus(path: str | Path, on_read: OnRead = None) -> list[Record]:
    """A JSONL corpus; entry i is line i (an ``id`` field, if any, is kept as ``source_id`` when it differs).
    ``on_read``, as every loader's here, is told the bytes of each line read (a progress bar)."""
    return _load_corpus_lines(path, on_read)[0]


def load_flag_jsonl(
    path: str | Path,
    corpus: list[Record] | str | Path | None = None,
    key_template: str = "{title} {text}",
    task: str | None = None,
    on_read: OnRead = None,
) -> list[Record]:
    """FlagEmbedding train/eval records with pos/neg texts filled from ``*_index`` via the corpus, validated."""
    corpus_lines: list[int] | None = None
    corpus_name = "corpus"
    if corpus is not None and not isinstance(corpus, list):
        corpus_name = str(corpus)
        corpus, corpus_lines = _load_corpus_lines(corpus, on_read)
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
    for line, raw in iter_jsonl(path, on_read=on_read):
        record = dict(raw)
        if "query_id" not in record and "qid" in record:
            record["query_id"] = record.pop("qid")
        record.setdefault("query_id", len(records))
        if default_task is None:
            default_task = record.get("task")
            if default_task is None:
                raise DataError(f"{path}:{line}:task: the first record must name its task (or give the task: "
                                "task=..., the command line's --task)")
        record.setdefault("task", default_task)
        if record["task"] != default_task:  # one task per file, as train reads it
            given = "the task given" if task is not None else "the file's task (its first record's)"
            raise DataError(f"{path}:{line}:task: {record['task']!r} differs from {given}, {default_task!r}; "
                            "one task per file")
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


def _first_bad_utf8(path: Path) -> None:
    """Raise ``FILE:LINE: not valid UTF-8 (byte .. at column ..)`` for the first line of ``path`` that is not UTF-8."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            decode_line(raw, str(path), line_no)


def _read_table(path: Path, delimiter: str, on_read: OnRead = None) -> Iterator[tuple[int, list[str]]]:
    """(first line, row) for each non-empty row of a CSV/TSV file; a BOM is dropped, bad UTF-8 names the file."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        lines = handle if on_read is None else (on_read(len(line.encode("utf-8"))) or line for line in handle)
        reader = csv.reader(lines, delimiter=delimiter)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as err:  # the text layer decodes ahead of the rows: find the line in the bytes
                _first_bad_utf8(path)
                raise DataError(f"{path}: not valid UTF-8 ({err.reason})") from None
            except csv.Error as err:
                raise DataError(f"{path}:{start}: {err}") from None
            if any(cell.strip() for cell in row):
                yield start, row


def _read_beir_jsonl(path: Path, what: str, on_read: OnRead = None
                     ) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, int]]:
    """The lines of a BEIR corpus/queries file, with the position of each ``_id``; a repeated ``_id`` is refused."""
    rows: list[tuple[int, dict[str, Any]]] = []
    positions: dict[str, int] = {}
    for line, record in iter_jsonl(path, on_read=on_read):
        if "_id" not in record:
            raise DataError(f"{path}:{line}:_id: missing (BEIR {what} lines need _id and text)")
        if "text" not in record:
            raise DataError(f"{path}:{line}:text: missing (BEIR {what} lines need _id and text)")
        if record["text"] is None:  # a null text is empty, as a null title is: a title-only passage, an empty query
            record = {**record, "text": ""}
        _optional_string(record["text"], f"{path}:{line}", "text")
        source_id = str(record["_id"])
        if source_id in positions:
            first = rows[positions[source_id]][0]
            raise DataError(f"{path}:{line}:_id: duplicate _id {source_id!r} (first on line {first})")
        positions[source_id] = len(rows)
        rows.append((line, record))
    return rows, positions


class NoRelevantWarning(UserWarning):
    """A BEIR import left out queries whose qrels judge no document relevant (every score 0 or less)."""


MAX_UNJUDGED_LISTED = 5  # queries named in the NoRelevantWarning; the rest are counted


def _warn_unjudged(unjudged: list[str], total: int, first_line: dict[str, int], qrels_path: Path) -> None:
    listed = ", ".join(f"{query_id!r} (line {first_line[query_id]})" for query_id in unjudged[:MAX_UNJUDGED_LISTED])
    more = f", and {len(unjudged) - MAX_UNJUDGED_LISTED} more" if len(unjudged) > MAX_UNJUDGED_LISTED else ""
    warnings.warn(f"{qrels_path}: left out {len(unjudged)} of {total} queries that have no relevant document (every "
                  f"score 0 or less): {listed}{more}; BEIR's evaluation scores no such query, and train and mine "
                  "refuse a record with no positive", NoRelevantWarning, stacklevel=3)  # at the call of load_beir


def load_beir(
    folder: str | Path, split: str = "test", task: str = "qa", key_template: str = "{title} {text}",
    on_read: OnRead = None,
) -> tuple[list[Record], list[Record]]:
    """A BEIR folder as (records, corpus): one record per query with qrels, positives = docs with score > 0.

    A query whose qrels judge no document relevant (every score 0 or less) is left out, as BEIR's evaluation leaves
    it out, with a ``NoRelevantWarning`` naming it; with none relevant for any query the folder is refused."""
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        raise FileNotFoundError(f"BEIR qrels not found: {qrels_path}")
    check_template(key_template, "key_template")
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    docs, doc_ids = _read_beir_jsonl(corpus_path, "corpus", on_read)
    corpus: list[Record] = []
    for line, record in docs:
        title = _optional_string(record.get("title"), f"{corpus_path}:{line}", "title") or ""
        if not record["text"].strip() and not title.strip():
            raise DataError(f"{corpus_path}:{line}:text: empty, and no title")
        corpus.append({"id": len(corpus), "title": title, "text": record["text"], "doc_id": str(record["_id"])})
    _check_key_template(key_template, corpus)
    queries, query_ids = _read_beir_jsonl(queries_path, "query", on_read)
    relevant: dict[str, list[int]] = {}
    first_line: dict[str, int] = {}  # the qrels line a query first appears on, to name it
    for line, row in _read_table(qrels_path, "\t", on_read):
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
            value = float(score)
        except ValueError:
            raise DataError(f"{qrels_path}:{line}:score: not a number: {score!r}") from None
        if not math.isfinite(value):  # float() reads "nan" and "inf": nan > 0 is False, so it read as not relevant
            raise DataError(f"{qrels_path}:{line}:score: not a finite number: {score!r}")
        if query_id not in relevant:
            relevant[query_id], first_line[query_id] = [], line
        if value > 0 and doc_ids[doc_id] not in relevant[query_id]:
            relevant[query_id].append(doc_ids[doc_id])
    if not relevant:
        raise DataError(f"{qrels_path}: no records (no query-id, corpus-id, score rows)")
    unjudged = [query_id for query_id, ids in relevant.items() if not ids]
    if len(unjudged) == len(relevant):
        raise DataError(f"{qrels_path}: no query has a relevant document (a score above 0); every score is 0 or less")
    if unjudged:
        _warn_unjudged(unjudged, len(relevant), first_line, qrels_path)
    records: list[tuple[int, Record]] = []
    for source_id, ids in relevant.items():
        if not ids:
            continue
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


MMLU_OPTIONS = "ABCDEFGHIJ"
_MMLU_SPLITS = ("_test", "_dev", "_val", "_validation", "_train", "_auxiliary_train")


def _mmlu_subject(path: Path) -> str:
    """``abstract_algebra`` for ``abstract_algebra_test.csv`` (the subject of a file of the CSV release)."""
    stem = path.stem
    for suffix in _MMLU_SPLITS:
        if stem.endswith(suffix):
            return stem.removesuffix(suffix)
    return stem


def _mmlu_record(
    question: Any, choices: Any, answer: Any, subject: Any, where: str
) -> tuple[str, list[str], int, str | None]:
    """The checked parts of one MMLU question; ``answer`` is an index into ``choices`` or its letter."""
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}:question: missing or empty question")
    if (not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str | int | float) and not isinstance(c, bool) for c in choices)):
        raise DataError(f"{where}:choices: must be a list of at least 2 answer options")
    choices = [str(c) for c in choices]
    if isinstance(answer, str) and answer.strip().upper() in MMLU_OPTIONS[: len(choices)]:
        index = MMLU_OPTIONS.index(answer.strip().upper())
    elif _is_int(answer) and 0 <= answer < len(choices):
        index = answer
    else:
        letters = MMLU_OPTIONS[: len(choices)]
        raise DataError(f"{where}:answer: expected one of {', '.join(letters)} or 0-{len(choices) - 1}, "
                        f"got {answer!r}")
    if not choices[index].strip():
        raise DataError(f"{where}:choices: the correct option {MMLU_OPTIONS[index]} is empty")
    _optional_string(subject, where, "subject")
    return question, choices, index, subject


def _mmlu_rows(path: Path, on_read: OnRead = None) -> Iterator[tuple[int, tuple[str, list[str], int, str | None]]]:
    if path.suffix.lower() == ".csv":
        subject = _mmlu_subject(path)
        for line, row in _read_table(path, ",", on_read):
            if line == 1 and [c.strip().lower() for c in row] in (
                    ["question", "a", "b", "c", "d", "answer"], ["input", "a", "b", "c", "d", "target"]):
                continue  # a header row (the CSV release has none; some copies add one)
            if len(row) != 6:
                raise DataError(f"{path}:{line}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
            yield line, _mmlu_record(row[0], row[1:5], row[5], subject, f"{path}:{line}")
        return
    for line, record in iter_jsonl(path, on_read=on_read):
        question = record.get("query", record.get("question"))
        parts = _mmlu_record(question, record.get("choices"), record.get("answer"), record.get("subject"),
                             f"{path}:{line}")
        yield line, parts


def mmlu_files(path: Path, split: str = "test") -> list[Path]:
    """The CSV files a folder of MMLU's release holds for ``split`` (``<subject>_<split>.csv``, the extension in any
    case, as a single file's): one split only, so that dev or val questions do not end up among the test ones."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if not files:
        raise FileNotFoundError(f"{path} holds no *.csv files (expected MMLU's <subject>_test.csv files)")
    chosen = [p for p in files if p.stem.endswith(f"_{split}")]
    if not chosen:
        shown = ", ".join(p.name for p in files[:4]) + (", ..." if len(files) > 4 else "")
        raise FileNotFoundError(f"{path} holds no <subject>_{split}.csv files (it holds {shown}); give the split "
                                "its files are named for, or one file")
    return chosen


def load_mmlu(path: str | Path, task: str = "qa", split: str = "test", on_read: OnRead = None) -> list[Record]:
    """MMLU-style multiple-choice questions as qa evaluation records, validated.

    Accepted forms:

    - JSON Lines, one question a line (llm-embedder's ``qa/mmlu/test.json``, HF ``cais/mmlu`` exported with
      ``to_json``): ``query`` or ``question``, ``choices`` (a list of options), ``answer`` (the index of the
      correct option, or its letter ``A``-``D``) and ``subject``;
    - the CSV release (``data/test/<subject>_test.csv``): rows ``question,A,B,C,D,answer`` (answer a letter), no
      header (a ``question,A,B,C,D,answer`` header is skipped); the subject is the file name less ``_test``,
      ``_dev`` or ``_val``;
    - a folder: its ``<subject>_<split>.csv`` files, by name (the CSV release's ``test/`` folder, one file per
      subject; ``split`` picks them, so that dev and val files beside them are not mixed in).

    Each record: ``query`` (the question), ``answers`` (the correct option's text), ``choices``,
    ``answer_index`` (0-based into ``choices``: the letter is ``"ABCD"[answer_index]``), ``subject`` (when known),
    and empty ``pos``/``neg``: the knowledge is retrieved from a corpus at evaluation time.
    """
    path = Path(path)
    if path.is_dir():
        files = mmlu_files(path, split)
    else:
        files = [require_file(path)]
    records: list[Record] = []
    problems = []
    for file in files:
        in_file: list[tuple[int, Record]] = []
        for line, (question, choices, index, subject) in _mmlu_rows(file, on_read):
            record: Record = {"query": question, "task": task, "query_id": len(records), "pos": [], "neg": [],
                              "answers": [choices[index]], "choices": choices, "answer_index": index}
            if subject is not None:
                record["subject"] = subject
            records.append(record)
            in_file.append((line, record))
        problems += validate_records(in_file, str(file))  # query ids run on across files: unique in each
    if not records:
        raise DataError(f"{path}: no records")
    raise_problems(problems, str(path))
    return records


POPQA_KEPT = ("subj", "prop", "obj", "prop_id", "s_pop")


def _answers(value: Any, where: str) -> list[str]:
    """``possible_answers``: a list of strings, or (in the TSV/CSV release) such a list as a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"{where}:possible_answers: not a JSON list: {value[:60]!r}") from None
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a.strip() for a in value):
        raise DataError(f"{where}:possible_answers: must be a non-empty list of non-empty strings")
    return value


def _number(value: Any, where: str) -> Any:
    """A numeric TSV cell (prop_id, s_pop) as an int (an empty one as it is); ``where`` (file:line:field) names
    a cell that is no integer ("nan", "inf") or one of more digits than Python converts."""
    if not isinstance(value, str) or not value.strip():
        return value
    if not value.strip().lstrip("-").isdigit():  # "nan", "inf", "1.5": PopQA's ids and popularities are counts
        raise DataError(f"{where}: expected an integer, got {value.strip()!r}")
    try:
        return int(value)
    except ValueError as err:
        if not is_digit_limit(err):
            raise
        raise DataError(f"{where}: {too_many_digits()}") from None


def _popqa_rows(path: Path, on_read: OnRead = None) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".csv"):
        yield from iter_jsonl(path, on_read=on_read)
        return
    header: list[str] | None = None
    for line, row in _read_table(path, "\t" if suffix == ".tsv" else ",", on_read):
        if header is None:
            header = [cell.strip() for cell in row]
            repeated = next((name for i, name in enumerate(header) if name and name in header[:i]), None)
            if repeated is not None:  # a dict of the row would keep only its last column, silently
                raise DataError(f"{path}:{line}: the header names column {repeated!r} twice")
            missing = [name for name in ("question", "possible_answers") if name not in header]
            if missing:
                raise DataError(f"{path}:{line}: header lacks {', '.join(missing)} (got {', '.join(header)})")
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line}: {len(row)} columns, the header has {len(header)}")
        cells = zip(header, row, strict=True)
        yield line, {name: _number(cell, f"{path}:{line}:{name}") if name in ("prop_id", "s_pop") else cell
                     for name, cell in cells}


def load_popqa(path: str | Path, task: str = "qa", on_read: OnRead = None) -> list[Record]:
    """PopQA-style questions as qa evaluation records, validated.

    Accepted forms: the TSV release (``popQA.tsv``, tab-separated with a header) or a CSV with the same header,
    needing ``question`` and ``possible_answers`` (a JSON list as text, e.g. ``["Ohio", "OH"]``); or JSON Lines
    with ``question`` (or ``query``) and ``possible_answers`` (a list, or the same JSON text; ``answers`` is
    accepted for it). ``prop_id`` (the relation, which the recipe's few-shot prompt groups by), ``subj``,
    ``prop``, ``obj`` and ``s_pop`` are kept when given, and ``id`` as ``source_id``.

    Each record: ``query``, ``answers`` (the possible answers), the kept fields, and empty ``pos``/``neg``.
    """
    path = require_file(path)
    records: list[tuple[int, Record]] = []
    for line, row in _popqa_rows(path, on_read):
        where = f"{path}:{line}"
        question = row.get("question", row.get("query"))
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}:question: missing or empty question")
        answers = _answers(row.get("possible_answers", row.get("answers")), where)
        record: Record = {"query": question, "task": task, "query_id": len(records), "pos": [], "neg": [],
                          "answers": answers}
        record.update({name: row[name] for name in POPQA_KEPT if row.get(name) not in (None, "")})
        if row.get("id") not in (None, ""):
            record["source_id"] = row["id"]
        records.append((line, record))
    if not records:
        raise DataError(f"{path}: no records")
    raise_problems(validate_records(records, str(path)), str(path))
    return [record for _, record in records]
