"""Schema validation of task data: every problem is reported as file:line:field, never silently skipped.

Every command that reads task data calls ``check_file``/``check_records``; ``llm-embedder data check`` shows
the problems of many files at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_embedder.io import DataError, JsonlError, iter_jsonl, require_file
from llm_embedder.tasks import Task, UnknownTaskError, get_task, list_tasks

STR_LISTS = ("pos", "neg", "answers", "history")
INT_LISTS = ("pos_index", "neg_index")
SCORE_FIELDS = ("teacher_scores",)
MAX_LISTED = 50


@dataclass(frozen=True)
class Problem:
    """One problem in a data file."""

    source: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.field}" if self.line else self.source  # line 0: the whole file
        return f"{where}: {self.message}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


FLOAT32_MAX = 3.4028234663852886e38  # train's labels are float32: a score beyond becomes inf, the loss NaN


def _finite(value: int | float) -> bool:
    """Whether a number is finite as a float32, the type train's labels have (an int too large for any float,
    1e39, -1e308 and NaN are not)."""
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:
        return False


def missing_positive(task: Task, n_pos: int) -> str | None:
    """Why a record with ``n_pos`` positives cannot train ``task`` (one that picks its positive from ``pos``), or
    None: the rule ``train`` applies, shared with ``data check``."""
    if task.select_positive in ("first", "random", "teacher-pos") and not n_pos:
        return f"no positive, but task {task.name!r} selects one with {task.select_positive!r}"
    return None


def other_task(name: str, file_task: str) -> str:
    """The problem of a record whose task is not its file's: one task per file, as ``train`` reads it."""
    return f"{name!r} differs from the file's task {file_task!r} (one task per file)"


def validate_record(record: dict[str, Any], source: str, line: int, corpus_size: int | None = None) -> list[Problem]:
    """Problems of one record (query_id uniqueness is checked by ``validate_records``)."""
    problems: list[Problem] = []

    def bad(field: str, message: str) -> None:
        problems.append(Problem(source, line, field, message))

    query = record.get("query")
    if "query" not in record:
        bad("query", "missing field")
    elif not isinstance(query, str):
        bad("query", f"must be a string, got {type(query).__name__}")
    elif not query.strip():
        bad("query", "empty query")

    task = record.get("task")
    if "task" not in record:
        bad("task", "missing field")
    elif not isinstance(task, str):
        bad("task", f"must be a string, got {type(task).__name__}")
    else:
        try:
            get_task(task)
        except UnknownTaskError as err:
            bad("task", str(err))

    if "query_id" not in record:
        bad("query_id", "missing field")
    elif not _is_int(record["query_id"]):
        bad("query_id", f"must be an integer, got {type(record['query_id']).__name__}")

    chat = record.get("history") is not None  # a null history is none, as train reads it
    if not chat:
        for field in ("pos", "neg"):
            if field not in record:
                bad(field, "missing field (or give `history` for chat records)")
    for field in STR_LISTS:
        value = record.get(field)
        if value is None:
            if field in ("pos", "neg") and field in record and not chat:  # train reads it as no candidates
                bad(field, "must be a list of strings, got null")
            continue
        if not isinstance(value, list):
            bad(field, f"must be a list of strings, got {type(value).__name__}")
        elif any(not isinstance(item, str) for item in value):
            where = next(i for i, item in enumerate(value) if not isinstance(item, str))
            bad(field, f"item {where} must be a string, got {type(value[where]).__name__}")
        elif any(not item.strip() for item in value):
            # an empty key is embedded as its instruction alone, near every query; an empty answer scores nothing
            where = next(i for i, item in enumerate(value) if not item.strip())
            bad(field, f"item {where} is empty")

    def length(field: str) -> int | None:
        value = record.get(field)
        return len(value) if isinstance(value, list) else None

    n_pos, n_neg, n_hist = length("pos"), length("neg"), length("history")
    for field in INT_LISTS:
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, list) or any(not _is_int(i) for i in value):
            bad(field, "must be a list of integers")
            continue
        # where the indices point: history (chat), the candidates (no corpus, no labelled positive), or the corpus
        if chat:
            limit, what = n_hist, "history"
        elif corpus_size is not None:
            limit, what = corpus_size, "corpus"
        elif field == "pos_index" and n_pos == 0:
            limit, what = n_neg, "neg"
        else:
            limit, what = None, "corpus"
        for i in value:
            if i < 0 or (limit is not None and i >= limit):
                size = "" if limit is None else f" of size {limit}"
                bad(field, f"index {i} out of {what} range{size}")
                break
    if not chat and record.get("pos_index") is not None and n_pos and length("pos_index") not in (None, n_pos):
        bad("pos_index", f"has {length('pos_index')} ids for {n_pos} positives")
    if not chat and record.get("neg_index") is not None and n_neg is not None and length("neg_index") != n_neg:
        bad("neg_index", f"has {length('neg_index')} ids for {n_neg} negatives")

    for field in SCORE_FIELDS:
        scores = record.get(field)
        if scores is None:
            continue
        if not isinstance(scores, list) or any(not _is_number(s) for s in scores):
            bad(field, "must be a list of numbers")
            continue
        expected = n_hist if chat else (n_pos or 0) + (n_neg or 0)
        if len(scores) != expected:
            what = "len(history)" if chat else "len(pos)+len(neg)"
            bad(field, f"has {len(scores)} scores, expected {what} = {expected}")
        if any(not _finite(s) for s in scores):
            bad(field, "contains NaN, infinite or out-of-range scores (train reads them as float32: |score| <= "
                       "3.4e38)")
    return problems


def validate_records(
    records: Iterable[tuple[int, dict[str, Any]] | dict[str, Any]], source: str, corpus_size: int | None = None,
    training: bool = False,
) -> list[Problem]:
    """Problems of many records: each record's own, plus duplicate query_ids. Records may be (line, record).

    ``training`` adds what train needs beyond the schema: one task per file, a positive where the task selects
    one."""
    problems: list[Problem] = []
    seen: dict[int, int] = {}
    file_task: str | None = None
    for position, item in enumerate(records, start=1):
        line, record = item if isinstance(item, tuple) else (position, item)
        problems += validate_record(record, source, line, corpus_size)
        name = record.get("task")
        if training and isinstance(name, str):
            file_task = file_task or name
            if name != file_task:
                problems.append(Problem(source, line, "task", other_task(name, file_task)))
            elif record.get("history") is None and isinstance(record.get("pos", []), list):
                try:
                    why = missing_positive(get_task(name), len(record.get("pos") or []))
                except UnknownTaskError:
                    why = None  # reported by validate_record
                if why:
                    problems.append(Problem(source, line, "pos", why))
        query_id = record.get("query_id")
        if _is_int(query_id):
            if query_id in seen:
                message = f"duplicate query_id {query_id} (first on line {seen[query_id]})"
                problems.append(Problem(source, line, "query_id", message))
            else:
                seen[query_id] = line
    return problems


def corpus_size_of(path: str | Path, option: str | None = None) -> int:
    """Number of entries of a corpus.jsonl: its lines that are not blank as every reader decodes them (a BOM on line
    1 dropped; a line of only a BOM, a no-break space or U+3000 is blank), bad UTF-8 ones included; ``option``
    names where the path came from in errors."""
    with require_file(path, option).open("rb") as handle:
        return sum(1 for line_no, raw in enumerate(handle, start=1)
                   if (raw[3:] if line_no == 1 and raw.startswith(b"\xef\xbb\xbf") else raw)
                   .decode("utf-8", errors="replace").strip())  # a bad byte (U+FFFD) is no blank: a bad entry


def _bad_line(problems: list[Problem]) -> Callable[[JsonlError], None]:
    """An ``on_error`` for iter_jsonl that records a bad line (bad UTF-8 or JSON) as a problem and goes on."""
    return lambda err: problems.append(Problem(err.source, err.line, err.field, err.reason))


def validate_corpus_file(path: str | Path, records: list[dict[str, Any]] | None = None) -> list[Problem]:
    """A corpus: each line has ``text`` (a string, not blank unless there is a ``title`` that is not) or, in
    FlagEmbedding's icl form, a non-empty ``contents`` string instead, and ``id`` equals its position when present.
    ``records``: a list the file's records are appended to, for a caller that reads the corpus as it is checked (one
    pass, not two)."""
    problems: list[Problem] = []
    bad: list[Problem] = []
    n_records = 0
    for line, record in iter_jsonl(path, on_error=_bad_line(bad), unique_keys=True):
        position = n_records + len(bad)  # entries count non-blank lines, bad ones included (as corpus_size_of)
        n_records += 1
        if records is not None:
            records.append(record)
        if "text" not in record and isinstance(record.get("contents"), str):  # FlagEmbedding's icl form
            if not record["contents"].strip():
                problems.append(Problem(str(path), line, "contents", "empty"))
        elif not isinstance(record.get("text"), str):
            problems.append(Problem(str(path), line, "text", "missing or not a string (and no `contents` string)"))
        elif not record["text"].strip() and not (isinstance(record.get("title"), str) and record["title"].strip()):
            # BEIR-style title-only documents are fine; a blank key would be embedded as the instruction alone
            problems.append(Problem(str(path), line, "text", "empty, and no title"))
        if "id" in record and record["id"] != position:
            problems.append(Problem(str(path), line, "id", f"expected {position} (= line order), got {record['id']!r}"))
        if record.get("title") is not None and not isinstance(record["title"], str):  # null: no title, as read
            problems.append(Problem(str(path), line, "title", "must be a string (or null for none)"))
    return _in_line_order(problems, bad, str(path), n_records)


def _in_line_order(problems: list[Problem], bad: list[Problem], source: str, n_records: int) -> list[Problem]:
    """Record problems and bad lines merged in line order; a file with no lines at all is one problem."""
    if not n_records and not bad:
        return [Problem(source, 0, "", "no records")]
    return sorted(problems + bad, key=lambda problem: problem.line)  # stable: a line keeps its field order


def is_corpus_path(path: str | Path) -> bool:
    return Path(path).name.startswith("corpus")


def as_evaluation_record(record: dict[str, Any], line: int, task: str | None) -> dict[str, Any]:
    """A record as evaluation reads it: what only training needs may be missing, so it is filled in before the
    checks (``pos`` and ``neg``, the labels being ``pos_index``; a ``query_id`` no record's own can clash with;
    ``task``, the folder's where known)."""
    view = dict(record)
    if "history" not in view:
        view.setdefault("pos", [])
        view.setdefault("neg", [])
    view.setdefault("query_id", 10**15 + line)
    if task is not None:
        view.setdefault("task", task)
    return view


def folder_task(path: Path) -> str | None:
    """The task a data file's folder is named after (a suite's ``<task>/test.jsonl``), None where it names none."""
    return path.parent.name if path.parent.name in list_tasks() else None


def validate_file(
    path: str | Path, corpus_size: int | None = None, training: bool = False, evaluation: bool = False
) -> list[Problem]:
    """Problems of a task data file (or of a corpus file), bad lines and emptiness included.

    A sibling corpus.jsonl sets the index range; ``training`` adds train's own needs (``validate_records``);
    ``evaluation`` checks the file as evaluation reads it (``as_evaluation_record``: the task is the folder's where
    the folder is named after a known task).
    """
    path = Path(path)
    if is_corpus_path(path):
        return validate_corpus_file(path)
    if corpus_size is None and (path.parent / "corpus.jsonl").is_file():
        corpus_size = corpus_size_of(path.parent / "corpus.jsonl")
    bad: list[Problem] = []  # lines that are not UTF-8 JSON objects: reported like any other problem, then skipped
    n_records = 0


    task = folder_task(path)

    def counted() -> Iterator[tuple[int, dict[str, Any]]]:
        nonlocal n_records
        for line, record in iter_jsonl(path, on_error=_bad_line(bad), unique_keys=True):  # a repeated key: one lost
            n_records += 1
            yield line, (as_evaluation_record(record, line, task) if evaluation else record)

    problems = validate_records(counted(), str(path), corpus_size, training)
    return _in_line_order(problems, bad, str(path), n_records)


def raise_problems(problems: Sequence[Problem | str], what: str) -> None:
    """Raise one DataError listing the problems (at most MAX_LISTED); a single problem is just its own line."""
    if len(problems) == 1:
        raise DataError(str(problems[0]))
    if problems:
        listed = "\n".join(str(p) for p in problems[:MAX_LISTED])
        more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in {what}:\n{listed}{more}")


def check_file(path: str | Path, corpus_size: int | None = None) -> None:
    """Raise DataError listing every problem of a data file; return quietly when it is valid."""
    raise_problems(validate_file(path, corpus_size), str(path))


def check_records(records: list[dict[str, Any]], source: str, corpus_size: int | None = None) -> None:
    """Raise DataError listing every problem of in-memory records."""
    raise_problems(validate_records(records, source, corpus_size), source)


def summarise(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task: records, average positives/negatives (or history turns), and whether teacher scores exist."""
    stats: dict[str, dict[str, Any]] = {}
    for record in records:
        entry = stats.setdefault(record.get("task", "?"), {"records": 0, "pos": 0, "neg": 0, "history": 0, "scored": 0})
        entry["records"] += 1
        entry["pos"] += len(record.get("pos") or [])
        entry["neg"] += len(record.get("neg") or [])
        entry["history"] += len(record.get("history") or [])
        entry["scored"] += "teacher_scores" in record
    summary = {}
    for task, entry in stats.items():
        n = entry["records"]
        summary[task] = {
            "records": n,
            "avg_pos": entry["pos"] / n,
            "avg_neg": entry["neg"] / n,
            "avg_history": entry["history"] / n,
            "has_scores": {n: "all", 0: "none"}.get(entry["scored"], f"{entry['scored']}/{n}"),
        }
    return summary
