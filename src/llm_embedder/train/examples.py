"""Turn task records (JSONL) into training examples: one query and a group of N keys (recipe §2.3).

A record is ``{query, task, pos: [str], neg: [str], teacher_scores?: [float] (pos first), history?, ...}``;
with ``history`` (chat) the candidates are ``pos = []``, ``neg = history``. Each record gives one example
``{"query": str, "keys": [N str], "label": [N float]?}`` with the positive first, chosen by the task's
``select_positive`` (first | random | teacher | teacher-pos) and N−1 negatives by ``select_negative``
(random | first | teacher- | teacher+); too few negatives are tiled. For ``stable_distill`` the negatives are
sorted by teacher score, descending (the positive stays first whatever its score). ``label`` holds the
teacher scores in key order, present for the distillation losses.

Instructions: the task's query/key instructions (from the registry) are applied when the batch is tokenised
(``collator.GroupCollator``), through sentence-transformers' ``prompt`` argument, the same code path as
``Embedder.encode``. The tokens are those of ``instruction + text`` (recipe §2.3), and a model whose pooling
excludes prompt tokens is handled the way sentence-transformers does at inference.

Random choices use an RNG seeded by (seed, file, line), so every rank builds identical examples; as in the
released code (``datasets.map`` once), each record's example is fixed for the whole run. Everything is validated
before training starts: first the shared schema (``llm_embedder.data.validate``, all problems of a file at once),
then what training needs (teacher scores for distillation, a negative, one task per file); a bad record raises
``DataError`` naming file:line:field.

Ablations (``TrainConfig``): ``hard_labels`` ignores teacher scores and trains every task contrastively on its
labelled positive (a history record's first ``pos_index`` turn), or on its top-rated candidate where it has none
(lrlm; a record with neither is dropped and counted); ``loss_override`` swaps a task's loss (e.g. plain KL for
qa); examples follow the swapped loss.
"""

from __future__ import annotations

import logging
import math
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from llm_embedder.data.validate import missing_positive, other_task, raise_problems, validate_file
from llm_embedder.io import DataError, iter_jsonl
from llm_embedder.tasks import Task, UnknownTaskError, get_task

DISTILL_LOSSES = ("kl_distill", "stable_distill")
log = logging.getLogger(__name__)


@dataclass
class TrainingFile:
    """One training dataset: a file's examples, all of one task."""

    name: str  # identifier without dots (used as the DatasetDict key and loss-dict key)
    path: Path
    task: str
    examples: list[dict[str, Any]] = field(default_factory=list)
    records: int = 0
    filtered: int = 0  # dropped by teacher_scores_margin / teacher_scores_min
    truncated: int = 0  # dropped by max_sample_num
    unlabelled: int = 0  # dropped under hard_labels: no labelled positive


def resolve_data_paths(items: list[str | Path]) -> list[Path]:
    """Files as given; a directory means every ``DIR/<task>/train.jsonl`` under it. Order and repeats kept."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*/train.jsonl"))
            if not found:
                raise FileNotFoundError(f"no <task>/train.jsonl files under data directory {path}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"training data not found: {path}")
    return paths


def dataset_name(index: int, path: Path, task: str) -> str:
    """A readable, unique, dot-free name: ``<index>-<task>-<parent dir>``."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.parent.name or path.stem)
    return f"{index:02d}-{task}-{stem}"


def _strings(value: Any, where: str, name: str, *, allow_missing: bool = False) -> list[str]:
    if value is None and allow_missing:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}:{name}: expected a list of strings")
    return list(value)


def parse_record(
    record: dict[str, Any], where: str, task: Task
) -> tuple[str, list[str], list[str], list[float] | None]:
    """Validate one record; returns (query, pos, neg, teacher_scores)."""
    query = record.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"{where}:query: missing or empty query")
    if "history" in record and record["history"] is not None:
        pos, neg = [], _strings(record["history"], where, "history")
    else:
        pos = _strings(record.get("pos"), where, "pos", allow_missing=True)
        neg = _strings(record.get("neg"), where, "neg", allow_missing=True)
    scores = record.get("teacher_scores")
    if scores is not None:
        numbers = isinstance(scores, list) and all(_is_number(s) for s in scores)
        if not numbers:
            raise DataError(f"{where}:teacher_scores: expected a list of numbers")
        if len(scores) != len(pos) + len(neg):
            raise DataError(
                f"{where}:teacher_scores: has {len(scores)} scores for {len(pos)} pos + {len(neg)} neg candidates"
            )
        scores = [float(s) for s in scores]
    needs_scores = (
        task.loss in DISTILL_LOSSES
        or task.select_positive in ("teacher", "teacher-pos")
        or task.select_negative in ("teacher-", "teacher+")
        or task.teacher_scores_margin is not None
        or task.teacher_scores_min is not None
    )
    if needs_scores and scores is None:
        raise DataError(f"{where}:teacher_scores: missing, but task {task.name!r} ({task.loss}) needs teacher scores")
    why = missing_positive(task, len(pos))
    if why:
        raise DataError(f"{where}:pos: {why}")
    candidates_left = len(neg) if task.select_positive != "teacher" else len(pos) + len(neg) - 1
    if not neg or candidates_left < 1:
        raise DataError(f"{where}:neg: record has no negative (every example needs at least one)")
    return query, pos, neg, scores


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def keep_record(scores: list[float] | None, task: Task) -> bool:
    """The teacher-score filters of recipe §2.3 (lrlm: margin 0.1)."""
    if scores is None:
        return True
    if task.teacher_scores_min is not None and max(scores) < task.teacher_scores_min:
        return False
    if task.teacher_scores_margin is not None and max(scores) - min(scores) < task.teacher_scores_margin:
        return False
    return True


def build_example(
    query: str, pos: list[str], neg: list[str], scores: list[float] | None, task: Task, group_size: int,
    rng: random.Random,
) -> dict[str, Any]:
    """One example: the positive, then ``group_size − 1`` negatives (see the module docstring)."""
    pos_scores = scores[: len(pos)] if scores is not None else None
    neg_scores = list(scores[len(pos):]) if scores is not None else None
    neg = list(neg)
    if task.select_positive == "first":
        positive, positive_score = pos[0], pos_scores[0] if pos_scores else None
    elif task.select_positive == "random":
        i = rng.randrange(len(pos))
        positive, positive_score = pos[i], pos_scores[i] if pos_scores else None
    elif task.select_positive == "teacher-pos":
        i = max(range(len(pos)), key=lambda j: pos_scores[j])
        positive, positive_score = pos[i], pos_scores[i]
    else:  # teacher: argmax over pos + neg; a winning negative is popped from neg
        i = max(range(len(scores)), key=lambda j: scores[j])
        if i < len(pos):
            positive, positive_score = pos[i], scores[i]
        else:
            positive, positive_score = neg.pop(i - len(pos)), neg_scores.pop(i - len(pos))
    need = group_size - 1
    if len(neg) < need:  # tile: neg * ceil(need / len(neg)), scores alike
        times = math.ceil(need / len(neg))
        neg = neg * times
        neg_scores = neg_scores * times if neg_scores is not None else None
    order = list(range(len(neg)))
    if task.select_negative == "random":
        chosen = rng.sample(order, need)
    elif task.select_negative == "first":
        chosen = order[:need]
    elif task.select_negative == "teacher-":
        chosen = sorted(order, key=lambda j: neg_scores[j])[:need]
    else:  # teacher+
        chosen = sorted(order, key=lambda j: -neg_scores[j])[:need]
    if task.loss == "stable_distill":
        chosen = sorted(chosen, key=lambda j: -neg_scores[j])
    example: dict[str, Any] = {"query": query, "keys": [positive] + [neg[j] for j in chosen]}
    if task.loss in DISTILL_LOSSES:
        example["label"] = [positive_score] + [neg_scores[j] for j in chosen]
    return example


def training_task(task: Task, hard_labels: bool = False, loss_override: dict[str, str] | None = None) -> Task:
    """The task recipe as this run trains it: hard labels (contrastive, no teacher) or an overridden loss."""
    if hard_labels:
        return replace(
            task, loss="contrastive", teacher_scores_margin=None, teacher_scores_min=None,
            select_positive="first" if task.select_positive.startswith("teacher") else task.select_positive,
            select_negative="random" if task.select_negative.startswith("teacher") else task.select_negative,
        )
    if loss_override and task.name in loss_override:
        return replace(task, loss=loss_override[task.name])
    return task


def hard_label_record(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record without teacher scores and with one hard positive: its labelled one (``pos``, a history's first
    ``pos_index`` turn), else, as the paper's "w/o LLM reward" row takes it, its top-rated candidate (the records
    without labels: lrlm's chunks, a reference MSC dialogue); None if it has neither."""
    scores = record.get("teacher_scores")
    record = {k: v for k, v in record.items() if k != "teacher_scores"}
    history = record.pop("history", None)
    candidates = list(history) if history is not None else [*(record.get("pos") or []), *(record.get("neg") or [])]
    if history is not None:
        marked = [i for i in record.get("pos_index") or [] if isinstance(i, int) and 0 <= i < len(history)]
        record["pos"], record["neg"] = [], candidates
        if marked:
            record["pos"] = [history[marked[0]]]
            record["neg"] = [turn for i, turn in enumerate(history) if i != marked[0]]
    if not record.get("pos"):
        if not isinstance(scores, list) or len(scores) != len(candidates) or len(candidates) < 2:
            return None
        top = max(range(len(candidates)), key=lambda i: scores[i])  # the first of equal best
        record["pos"] = [candidates[top]]
        record["neg"] = [text for i, text in enumerate(candidates) if i != top]
    return record


def load_training_file(
    path: str | Path, index: int, group_size: int = 8, seed: int = 42, *, hard_labels: bool = False,
    loss_override: dict[str, str] | None = None,
) -> TrainingFile:
    """Validate every record of a file and build its examples. One task per file (named in its records)."""
    path = Path(path)
    if group_size < 2:
        raise ValueError(f"group size must be at least 2 (1 positive + negatives), got {group_size}")
    raise_problems(validate_file(path), str(path))
    task: Task | None = None
    examples: list[dict[str, Any]] = []
    records = filtered = unlabelled = 0
    for line_no, record in iter_jsonl(path):
        where = f"{path}:{line_no}"
        name = record.get("task")
        if not isinstance(name, str):
            raise DataError(f"{where}:task: missing task name")
        try:
            record_task = training_task(get_task(name), hard_labels, loss_override)
        except UnknownTaskError as err:
            raise DataError(f"{where}:task: {err}") from None
        if task is None:
            task = record_task
        elif record_task.name != task.name:
            raise DataError(f"{where}:task: {other_task(name, task.name)}")
        if hard_labels:
            record = hard_label_record(record)
            if record is None:
                records += 1
                unlabelled += 1
                continue
        query, pos, neg, scores = parse_record(record, where, task)
        records += 1
        if not keep_record(scores, task):
            filtered += 1
            continue
        rng = random.Random(f"{seed}:{index}:{line_no}")
        examples.append(build_example(query, pos, neg, scores, task, group_size, rng))
    if task is None:
        raise DataError(f"{path}: no records")
    truncated = 0
    if task.max_sample_num is not None and len(examples) > task.max_sample_num:
        truncated = len(examples) - task.max_sample_num
        examples = examples[: task.max_sample_num]
    if unlabelled:
        log.warning("%s: %d of %d records have no labelled positive and are dropped (hard labels)",
                    path, unlabelled, records)
    return TrainingFile(dataset_name(index, path, task.name), path, task.name, examples, records, filtered, truncated,
                        unlabelled)


def load_training_files(
    items: list[str | Path], group_size: int = 8, seed: int = 42, *, hard_labels: bool = False,
    loss_override: dict[str, str] | None = None,
) -> list[TrainingFile]:
    """Resolve and load all training files (validating everything); a file listed twice loads twice."""
    return [load_training_file(p, i, group_size, seed, hard_labels=hard_labels, loss_override=loss_override)
            for i, p in enumerate(resolve_data_paths(items))]
