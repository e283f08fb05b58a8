"""Hard-negative mining with a dense retriever (recipe §2.9).

For each record, retrieve the top passages of a corpus with the embedder (the task's instructions applied),
drop the record's positives (by ``pos_index`` and by exact text) and, with ``filter_answers``, every passage
that contains one of the record's ``answers`` (case-insensitive), and keep the first ``top_k`` as ``neg``
(``neg_index`` their corpus rows). Existing ``teacher_scores`` are dropped: they no longer match the candidates.

The corpus is encoded per task by the resumable index build (``llm_embedder.index.build``) into ``OUT.work/<task>/``
beside the output, so a mine cut short goes on where it stopped when run again; the folder goes once ``OUT`` is
written. A run holds ``OUT.lock`` (``llm_embedder.io.exclusive``) from before it looks at the work folder until it
ends: a second run on the same ``OUT`` is refused instead of deleting the first's work.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

from llm_embedder.data.validate import Problem, raise_problems, validate_records
from llm_embedder.io import (
    DataError,
    atomic_write,
    check_output_dir,
    check_output_file,
    check_template,
    exclusive,
    fill_template,
    iter_jsonl,
    write_jsonl,
)

WORK_SUFFIX = ".work"  # OUT.work/<task>/: the corpus vectors, kept until OUT is written, so that a re-run goes on
WORK_STAMP = "mine_inputs.json"  # in OUT.work: the corpus, template and model its vectors come from


def _string(record: dict[str, Any], field: str, where: str) -> str:
    """``record[field]``, refused unless a string (a list was formatted into the passage as its repr)."""
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}:{field}: must be a string, got {type(value).__name__}")
    return value


def corpus_texts(path: str | Path, key_template: str | None = None) -> list[str]:
    """Corpus passages: ``key_template`` over each record's fields, or text / title+text / contents (a null title
    is none, as the key template reads it); a field that is no string is refused, naming FILE:LINE:field."""
    texts = []
    if key_template:
        check_template(key_template, "the key template")
    for line_no, record in iter_jsonl(path):
        where = f"{path}:{line_no}"
        try:
            if key_template:
                text = fill_template(key_template, record, where, "the key template")
            elif "contents" in record:
                text = _string(record, "contents", where)
            elif record.get("title") is not None and "text" in record:
                text = f"{_string(record, 'title', where)} {_string(record, 'text', where)}"
            else:
                text = _string(record, "text", where)
        except KeyError as err:
            raise DataError(f"{where}:{err.args[0]}: missing corpus field") from None
        if not text.strip():  # embedded as the instruction alone, it would be near every query: a negative for all
            how = f"the key template {key_template!r} gives" if key_template else "the record has"
            raise DataError(f"{where}: {how} an empty text; give each passage a text")
        texts.append(text.strip())
    if not texts:
        raise DataError(f"{path}: empty corpus")
    return texts


class FewNegativesWarning(UserWarning):
    """Some records got fewer than ``top_k`` negatives: written as they are, but the user asked for more."""


MAX_SHORT_LISTED = 5  # records named in the FewNegativesWarning; the rest are counted


def warn_short(short: list[tuple[int, int]], total: int, data: str | Path, top_k: int, searched: int,
               filter_answers: bool) -> None:
    """Warn, naming them, of the records (line, negatives) that got fewer than ``top_k`` negatives: written
    silently, they trained on fewer negatives than asked without anyone knowing."""
    if not short:
        return
    listed = ", ".join(f"{data}:{line} has {count}" for line, count in short[:MAX_SHORT_LISTED])
    more = f", and {len(short) - MAX_SHORT_LISTED} more" if len(short) > MAX_SHORT_LISTED else ""
    left_out = "positives and answer-bearing passages" if filter_answers else "positives"
    warnings.warn(f"{len(short)} of {total} records got fewer than {top_k} negatives ({listed}{more}): too few of "
                  f"the {searched} passages retrieved for each were left once {left_out} were left out",
                  FewNegativesWarning, stacklevel=4)  # at the call of mine_negatives


MINED_FIELDS = ("neg", "neg_index", "teacher_scores")  # what mining writes anew (teacher_scores: dropped)


def input_problems(records: list[tuple[int, dict[str, Any]]], source: str, corpus_size: int) -> list[Problem]:
    """The problems of the records to mine for, as ``data check`` finds them (``pos_index`` a row of the corpus),
    less those of the fields mining writes anew (``MINED_FIELDS``): a record fit to mine for is then fit to train
    on once mined. Also refused: a chat record (``history``; its candidates are its history turns, recipe §2.3, so
    a corpus has nothing to offer it, and mining dropped its history and wrote it with no positive) and a record
    with no positive (``pos`` and ``pos_index`` empty, as lrlm's), whose right passages would be mined as negatives."""
    checked, own = [], []
    for line, record in records:
        view = {k: v for k, v in record.items() if k not in MINED_FIELDS} | {"neg": []}
        if "history" in record:
            own.append(Problem(source, line, "history", "a chat record: its candidates are its history turns, not "
                               "corpus passages, so there is nothing to mine for it; leave it out of the file to mine "
                               "(score and train take it as it is)"))
        elif "pos" not in record:  # data check's hint, "or give `history`", does not apply here
            view["pos"] = []
            own.append(Problem(source, line, "pos", "missing field: the record's positives, kept out of its negatives"))
        elif record["pos"] == [] and not record.get("pos_index"):
            own.append(Problem(source, line, "pos", "no positive (pos and pos_index are empty): the passages that "
                               "answer the query would be mined as its negatives"))
        checked.append((line, view))
    problems = validate_records(checked, source, corpus_size) + own
    return sorted(problems, key=lambda problem: problem.line)  # stable: a line keeps data check's order first


def select_negatives(
    ranked: list[int], texts: list[str], record: dict[str, Any], top_k: int, filter_answers: bool
) -> list[int]:
    """The first ``top_k`` ranked corpus rows that are not positives (nor answer-bearing, if asked)."""
    positive_ids = set(record.get("pos_index") or [])
    positive_texts = {p.strip() for p in record.get("pos") or []}
    answers = [a.lower() for a in record.get("answers") or [] if isinstance(a, str) and a.strip()]
    chosen = []
    for row in ranked:
        text = texts[row]
        if row in positive_ids or text in positive_texts:
            continue
        if filter_answers and any(answer in text.lower() for answer in answers):
            continue
        chosen.append(row)
        if len(chosen) == top_k:
            break
    return chosen


def corpus_index(embedder: Any, texts: list[str], task: str, work: Path, batch_size: int, progress: bool) -> Any:
    """A flat index of the corpus's key vectors for ``task``, built (or finished, after an interruption) in
    ``work/<task>`` by the resumable index build."""
    from llm_embedder.index.build import FAISS_FILE, build_index
    from llm_embedder.index.faiss_index import FaissIndex

    build_index(({"text": text} for text in texts), work / task, embedder, task, batch_size=batch_size,
                progress=progress)
    return FaissIndex.load(work / task / FAISS_FILE)


def start_work(work: Path, inputs: dict[str, Any]) -> None:
    """Keep ``work`` (the corpus vectors of an interrupted run) if it was made from ``inputs``, else start it
    afresh (``mine_negatives`` has refused a folder of that name that no mine made)."""
    from llm_embedder.train.once import read_stamp

    if read_stamp(work / WORK_STAMP) != inputs:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    with atomic_write(work / WORK_STAMP) as handle:
        json.dump(inputs, handle)


def mine_negatives(
    model: str, data: str | Path, corpus: str | Path, out: str | Path, *, top_k: int = 100,
    filter_answers: bool = False, key_template: str | None = None, device: str | None = None,
    batch_size: int = 64, progress: bool = True,
) -> int:
    """Write ``out``: each record of ``data`` with mined ``neg``/``neg_index``. Returns the record count."""
    from llm_embedder.embedder import register_model_tasks
    from llm_embedder.models import check_device

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a whole number of at least 1, got {top_k!r}")
    check_device(device)  # before the data and corpus are read
    check_output_file(out, "--out", inputs=[data, corpus])  # before the model loads and the corpus is encoded
    register_model_tasks(model)  # a task the model was trained with is known when the records' tasks are looked up
    # held before the work folder is checked, kept or deleted: a second run on OUT would delete this one's vectors
    with exclusive(Path(f"{out}.lock"), f"the mined negatives {out}"):
        return _mine_negatives(model, data, corpus, out, top_k=top_k, filter_answers=filter_answers,
                               key_template=key_template, device=device, batch_size=batch_size, progress=progress)


def _mine_negatives(
    model: str, data: str | Path, corpus: str | Path, out: str | Path, *, top_k: int, filter_answers: bool,
    key_template: str | None, device: str | None, batch_size: int, progress: bool,
) -> int:
    """``mine_negatives`` once its output is held."""
    import numpy as np

    from llm_embedder.embedder import Embedder
    from llm_embedder.index.build import corpus_fingerprint, key_max_length
    from llm_embedder.models import model_version

    work = Path(f"{out}{WORK_SUFFIX}")
    check_output_dir(work, (WORK_STAMP,), "a mining run's work", option="the work folder")
    numbered = list(iter_jsonl(data))
    records = [record for _, record in numbered]
    if not records:
        raise DataError(f"{data}: no records to mine negatives for")
    texts = corpus_texts(corpus, key_template)
    # data check's rules, before anything is encoded: a string for pos was mined as its characters, a string for
    # answers filtered out every passage holding one of its letters, [5] for pos failed with a traceback
    raise_problems(input_problems(numbered, str(data), len(texts)), str(data))
    embedder = Embedder(model, device=device, batch_size=batch_size)
    start_work(work, {"corpus": corpus_fingerprint(corpus), "key_template": key_template,
                      "model": str(Path(embedder.path).resolve()),
                      "weights": model_version(embedder.path),  # a model retrained in place gets new vectors
                      "key_max_length": key_max_length(embedder)})
    by_task: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_task.setdefault(record["task"], []).append(i)
    results: list[dict[str, Any]] = [dict() for _ in records]
    depth = min(len(texts), top_k + 50 + max((len(r.get("pos") or []) for r in records), default=0))
    for task, rows in by_task.items():
        index = corpus_index(embedder, texts, task, work, batch_size, progress)
        queries = embedder.encode_queries([records[i]["query"] for i in rows], task)
        _, ranked = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
        for i, hits in zip(rows, ranked, strict=True):
            record = dict(records[i])
            chosen = select_negatives([int(h) for h in hits if h >= 0], texts, record, top_k, filter_answers)
            record.pop("teacher_scores", None)
            record["neg"] = [texts[j] for j in chosen]
            record["neg_index"] = chosen
            results[i] = record
    short = [(line, len(mined["neg"])) for (line, _), mined in zip(numbered, results, strict=True)
             if len(mined["neg"]) < top_k]
    write_jsonl(out, results)
    warn_short(short, len(results), data, top_k, depth, filter_answers)
    shutil.rmtree(work, ignore_errors=True)
    return len(results)
