"""Evaluate retrievers on the task suite: retrieval metrics plus the LLM's downstream quality.

Results are cached per (task, system) in ``out/results.json``, so an interrupted run resumes where it
stopped and adding a system re-uses everything already measured. ``out/per_query.json`` keeps each system's
per-query values of the task's paired metric (``paired_metric``), so two systems can be compared query by query
with a standard error rather than by two means alone. ``out/versions.json`` keeps the model version each result was
measured with, where the caller names it (``models.model_version``: the weight files' sizes and times), so that
a model retrained in place is measured again rather than reported from the cache. The LLM's version
(``llm.loading.llm_version``) is one of the settings: results measured with other LLM weights are all measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_embedder.evaluate.downstream import (
    DOWNSTREAM,
    downstream_metrics,
    downstream_spec,
    is_user_task,
    main_metric,
)
from llm_embedder.evaluate.metrics import per_query_metric, retrieval_metrics
from llm_embedder.evaluate.rankers import (
    BM25Ranker,
    GoldRanker,
    NoRetrieval,
    RandomRanker,
    Ranker,
    RecencyRanker,
    TeacherRanker,
)
from llm_embedder.io import (
    LOCK_FILE,
    DataError,
    as_recorded,
    atomic_write,
    exclusive,
    file_sha256,
    iter_jsonl,
)
from llm_embedder.models import ModelChangedWarning
from llm_embedder.progress import LoggedProgress

RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.json"
SETTINGS_FILE = "settings.json"
VERSIONS_FILE = "versions.json"  # task -> system -> the model version its cached results were measured with
DATA_VERSIONS_FILE = "data_versions.json"  # task -> {"sha256": the data its cached results were measured on}
MODEL_PATHS_FILE = "model_paths.json"  # system -> {"path": its model's folder (a {task} template)}, as last given
RETRIEVAL_DEPTH = 10


@dataclass
class TaskData:
    """One task's evaluation split in a uniform shape."""

    task: str
    queries: list[str]
    answers: list[list[str]]
    candidates: list[str] | list[list[str]]  # a shared corpus, or per-query candidates
    golds: list[list[int]]

    @property
    def per_query(self) -> bool:
        return bool(self.candidates) and not isinstance(self.candidates[0], str)

    def texts(self, i: int, ids: Sequence[int]) -> list[str]:
        pool = self.candidates[i] if self.per_query else self.candidates
        return [pool[j] for j in ids]


class CorpusMissingWarning(UserWarning):
    """An evaluation split names corpus ids but its task folder holds no corpus.jsonl."""


def corpus_text(doc: dict[str, Any]) -> str:
    """The key text of a corpus document: "{title} {text}" as in the training positives, or FlagEmbedding's icl
    form, ``contents`` (which ``data check`` accepts for a line without ``text``)."""
    if "text" not in doc and isinstance(doc.get("contents"), str):
        return doc["contents"]
    return f"{doc['title']} {doc['text']}" if doc.get("title") else doc["text"]


def subsample_corpus(
    corpus: list[str], golds: list[list[int]], max_corpus: int, seed: int = 0, hard: list[list[int]] | None = None
) -> tuple[list[str], list[list[int]]]:
    """Keep every gold document, then the queries' listed hard negatives (``hard``, round-robin over queries
    while they fit), then a seeded random sample of the rest, up to ``max_corpus``; remap the ids.

    The hard negatives are the documents that would crowd the top of the full corpus; a slice without them
    would be far easier than the corpus it stands for.
    """
    keep_set = {g for gold in golds for g in gold}
    for rank in range(max((len(h) for h in hard or []), default=0)):
        for negatives in hard or []:
            if len(keep_set) >= max_corpus:
                break
            if rank < len(negatives) and 0 <= negatives[rank] < len(corpus):
                keep_set.add(negatives[rank])
    rest = np.setdiff1d(np.arange(len(corpus)), sorted(keep_set))
    extra = np.random.default_rng(seed).choice(rest, size=max(0, min(len(rest), max_corpus - len(keep_set))),
                                               replace=False)
    keep = sorted(keep_set | {int(i) for i in extra})
    new_id = {old: new for new, old in enumerate(keep)}
    return [corpus[i] for i in keep], [[new_id[g] for g in gold] for gold in golds]


def recent_window(candidates: list[str], gold: list[int], size: int) -> tuple[list[str], list[int]]:
    """The gold candidates plus the most recent others, ``size`` in all, in their original order."""
    if len(candidates) <= size:
        return candidates, gold
    gold_set = {g for g in gold if 0 <= g < len(candidates)}
    others = [i for i in range(len(candidates)) if i not in gold_set]
    keep = sorted(gold_set | set(others[len(others) - max(0, size - len(gold_set)) :]))
    new_id = {old: new for new, old in enumerate(keep)}
    return [candidates[i] for i in keep], [new_id[g] for g in gold if g in new_id]


def check_split(numbered: list[tuple[int, dict[str, Any]]], path: Path, task: str, corpus_size: int | None) -> None:
    """Refuse an evaluation split (its (line, record) pairs) that data check would refuse, naming every problem (a
    number in ``answers`` failed deep in the LLM pass, a ``pos_index`` out of range or an empty history turn was
    scored silently). What only training needs may be missing: ``pos`` and ``neg`` (the labels are ``pos_index``),
    ``query_id``, and ``task`` (the folder's)."""
    from llm_embedder.data.validate import as_evaluation_record, raise_problems, validate_records

    views = [(line_no, as_evaluation_record(record, line_no, task)) for line_no, record in numbered]
    raise_problems(validate_records(views, str(path), corpus_size), str(path))


def check_corpus(path: Path) -> list[dict[str, Any]]:
    """A corpus.jsonl's records, read as it is checked; refused where data check would refuse it (a line without a
    ``text`` or ``contents`` string, an empty text without a title, a title that is no string, an ``id`` out of line
    order, a bad line), naming each problem's FILE:LINE:field."""
    from llm_embedder.data.validate import raise_problems, validate_corpus_file

    records: list[dict[str, Any]] = []
    raise_problems(validate_corpus_file(path, records), str(path))
    return records


def load_task_data(
    data_dir: str | Path, task: str, split: str = "test", max_queries: int | None = None,
    max_corpus: int | None = None, max_candidates: int | None = None,
) -> TaskData:
    """Read DIR/<task>/<split>.jsonl (and DIR/<task>/corpus.jsonl when the task has a shared corpus).

    ``max_corpus`` evaluates against a smaller corpus: all gold documents, the records' hard negatives
    (``neg_index``) while they fit, and a fixed random sample.
    ``max_candidates`` keeps, of a query's own candidates (chat turns, earlier chunks), the gold ones plus
    the most recent others.
    """
    task_dir = Path(data_dir) / task
    path = task_dir / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no {split} split for task {task!r}: {path} (run `llm-embedder data build`)")
    corpus_path = task_dir / "corpus.jsonl"
    corpus = None
    if corpus_path.exists():
        # checked: a document with no text string failed as a KeyError or was embedded as "t None"
        corpus = [corpus_text(doc) for doc in check_corpus(corpus_path)]
    numbered = list(iter_jsonl(path))  # read once: checked whole, the first max_queries evaluated
    # a query that is no text, or a pos_index outside the corpus, is among the problems it names
    check_split(numbered, path, task, None if corpus is None else len(corpus))
    if not numbered:
        raise DataError(f"{path}: no records")
    queries, answers, candidates, golds, hard = [], [], [], [], []
    if corpus is None and any(r.get("pos") and r.get("pos_index") for _, r in numbered if "history" not in r):
        warnings.warn(f"{path}: its records give corpus ids (pos_index) but {corpus_path} is missing, so each query "
                      "is ranked among its own pos and neg texts only; put the corpus there to rank against it",
                      CorpusMissingWarning, stacklevel=2)
    for line_no, record in numbered[:max_queries]:
        where = f"{path}:{line_no}"
        if record.get("task", task) != task:  # a typo'd or misplaced record would be scored as this task
            raise DataError(f"{where}: field 'task' is {record['task']!r}, but the file is {task!r}'s split")
        queries.append(record["query"])
        answers.append(list(record.get("answers") or []))
        if "history" in record:
            candidates.append(record["history"])
            golds.append(list(record.get("pos_index") or []))
        elif corpus is not None:
            golds.append(list(record.get("pos_index") or []))
            hard.append([i for i in record.get("neg_index") or [] if isinstance(i, int)])
        else:
            pos, neg = list(record.get("pos") or []), list(record.get("neg") or [])
            candidates.append(pos + neg)
            # the positives lead the candidates; pos_index is a corpus id beside pos texts (it was read as a place in
            # the candidates, so one query in a corpus of them found its positive), a place in neg without them
            golds.append(list(range(len(pos))) if pos else list(record.get("pos_index") or []))
    if max_candidates:
        for i, (group, gold) in enumerate(zip(candidates, golds, strict=False)):
            candidates[i], golds[i] = recent_window(group, gold, max_candidates)
    if corpus is not None and not candidates:
        if max_corpus and len(corpus) > max_corpus:
            corpus, golds = subsample_corpus(corpus, golds, max_corpus, hard=hard)
        return TaskData(task, queries, answers, corpus, golds)
    return TaskData(task, queries, answers, candidates, golds)


def judged_by_llm(data: TaskData) -> bool:
    """Whether a task's data gets the LLM metric (given an LLM): a built-in task with a ``DOWNSTREAM`` entry always,
    a user task when its records carry answers (scored in its reward template); tool and convsearch never."""
    return data.task in DOWNSTREAM or (downstream_spec(data.task) is not None and any(data.answers))


def baseline_rankers(task: str, per_query: bool, llm_metric: bool = False) -> list[Ranker]:
    """The retrieval-free and lexical baselines that apply to a task; no retrieval (``none``) where the LLM judges
    it: a built-in LLM task, or another (a user task) with ``llm_metric``."""
    rankers: list[Ranker] = [NoRetrieval()] if task in DOWNSTREAM or llm_metric else []
    rankers += [RandomRanker(), BM25Ranker()]
    if per_query:
        rankers.append(RecencyRanker())
    return rankers


def evaluate_system(
    data: TaskData,
    ranker: Ranker,
    lm=None,
    *,
    generate: bool = True,
    llm_queries: int | None = None,
    memo: dict | None = None,
    items: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], list[float]]:
    """Retrieval metrics (where gold ids exist) over every query, and the downstream LLM metric (where the task
    has one) over the first ``llm_queries`` of them, from the same rankings; with the per-query values of the
    task's ``paired_metric``.

    ``memo`` ((prompt, answer) -> log-likelihood, shared across the systems of a task) skips prompts another
    system already sent: systems that retrieve the same items for a query get the same score without a
    second forward pass. ``progress(done, total)`` follows the prompts sent to the LLM.
    """
    rankings = ranker.rank(data.task, data.queries, data.candidates, RETRIEVAL_DEPTH)
    metrics: dict[str, float] = {}
    per_query: list[float] = []
    if not isinstance(ranker, NoRetrieval):
        metrics.update(retrieval_metrics(rankings, data.golds))
        if data.task not in DOWNSTREAM:
            per_query = per_query_metric(rankings, data.golds, main_metric(data.task)[0])
    n = len(data.queries) if llm_queries is None else min(llm_queries, len(data.queries))
    builtin = data.task in DOWNSTREAM  # else a user task with answers (judged_by_llm)
    if lm is not None and judged_by_llm(data) and (builtin or n > 0):
        missing = [i + 1 for i, a in enumerate(data.answers[:n]) if not a]
        if missing:
            hint = ("evaluate without the LLM (--llm none) for the retrieval metrics alone (a BEIR import has no "
                    "answers)") if builtin else "give none of them answers, for retrieval metrics only"
            raise DataError(f"task {data.task}: the LLM metric scores each record's gold answer, and record(s) "
                            f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''} of the split have "
                            f"no 'answers'; give them answers, or {hint}")
        spec = downstream_spec(data.task)
        shown = rankings[:n]
        if spec is not None and spec.sequential and data.per_query:  # the prompt's items in their text's order
            shown = [sorted(ids[:items or spec.items]) for ids in shown]
        retrieved = [data.texts(i, ids) for i, ids in enumerate(shown)]
        result = downstream_metrics(
            data.task, data.queries[:n], data.answers[:n], retrieved, lm, generate=generate, memo=memo, items=items,
            progress=progress,
        )
        metrics.update(result.metrics)
        if builtin:  # a user task's paired metric is its main one, NDCG@10
            per_query = result.per_query
    return metrics, per_query


def paired_metric(task: str) -> str:
    """What ``per_query.json`` holds per query, higher always better: the gold answer's log-likelihood for the
    built-in tasks judged by the LLM (perplexity is exp(-mean) of it), else the task's main retrieval metric (a user
    task's too, whose main metric is NDCG@10 whether or not the LLM also judges it)."""
    return "gold_loglik" if task in DOWNSTREAM else main_metric(task)[0]


def per_query_gap(
    per_query: dict[str, Any] | None, task: str, system: str, other: str
) -> tuple[float, float, int] | None:
    """``system`` − ``other`` on a task's queries in ``per_query.json``: the paired mean difference, its standard
    error and the number of queries; None when either lacks per-query values for the same queries."""
    from llm_embedder.evaluate.metrics import paired_difference

    ours, theirs = (per_query or {}).get(task, {}).get(system), (per_query or {}).get(task, {}).get(other)
    if not ours or not theirs or len(ours) != len(theirs) or len(ours) < 2:
        return None
    return (*paired_difference(ours, theirs), len(ours))


def load_results(out_dir: Path, name: str = RESULTS_FILE) -> dict[str, dict[str, Any]]:
    """task -> system -> metrics (``results.json``), or -> per-query values (``name=PER_QUERY_FILE``); a cache
    file that is not such a mapping (cut short, or edited) is refused, naming it."""
    path = out_dir / name
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a results cache ({err}); delete it to measure again") from None
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise DataError(f"{path}: not a results cache (expected task -> system -> values); delete it to measure "
                        "again")
    return results


def save_results(out_dir: Path, results: dict, name: str = RESULTS_FILE) -> None:
    with atomic_write(out_dir / name) as handle:
        json.dump(results, handle, indent=2, sort_keys=True)


def drop_results(out_dir: Path, stale: Callable[[str, str], bool]) -> None:
    """Drop the cached results (metrics and per-query values) of each (task, system) that ``stale`` names."""
    for name in (RESULTS_FILE, PER_QUERY_FILE):
        results = load_results(out_dir, name)
        if results:
            kept = {t: {s: m for s, m in v.items() if not stale(t, s)} for t, v in results.items()}
            save_results(out_dir, kept, name)


def forget_systems(out_dir: Path, systems: Sequence[str], tasks: Sequence[str] | None = None) -> None:
    """Drop the cached results of these systems, on these tasks (None: all)."""
    drop_results(out_dir, lambda task, system: system in systems and (tasks is None or task in tasks))


def forget_other_versions(out_dir: Path, versions: dict[str, dict[str, Any]]) -> None:
    """Drop each (task, system) result measured with another model version than ``versions`` (system -> task ->
    version) gives, or with an unknown one, and record the versions the results will now be measured with."""
    stored = load_results(out_dir, VERSIONS_FILE)
    changed = {(task, system) for system, by_task in versions.items() for task, version in by_task.items()
               if stored.get(task, {}).get(system, "unknown") != version}
    drop_results(out_dir, lambda task, system: (task, system) in changed)
    for system, by_task in versions.items():
        for task, version in by_task.items():
            stored.setdefault(task, {})[system] = version
    save_results(out_dir, stored, VERSIONS_FILE)


def forget_changed_others(out_dir: Path, asked: Sequence[str], paths: dict[str, str]) -> list[str]:
    """Record each asked system's model folder (``paths``: system -> path, ``{task}`` for one model per task), and
    drop the cached results of the systems not asked for this time whose recorded folder now holds other weights
    than their results were measured with (``versions.json``): the table shows those systems from the cache, and
    would show a retrained model's old figures. A folder gone or never recorded keeps its results. Returns a line
    per system dropped."""
    from llm_embedder.models import model_version

    recorded = load_results(out_dir, MODEL_PATHS_FILE)
    versions = load_results(out_dir, VERSIONS_FILE)
    stale: set[tuple[str, str]] = set()
    dropped = []
    for system, entry in recorded.items():
        path = entry.get("path")
        if system in asked or not isinstance(path, str):
            continue
        changed = []
        for task, by_system in versions.items():
            if system not in by_system:
                continue
            now = model_version(path.replace("{task}", task))
            if now is not None and now != by_system[system]:
                changed.append(task)
        if changed:
            stale.update((task, system) for task in changed)
            dropped.append(f"the model of {system!r} ({path}) changed since its cached results on "
                           f"{', '.join(changed)} were measured: they are left out; evaluate it again with "
                           f"--model {system}={path}")
    if stale:
        drop_results(out_dir, lambda task, system: (task, system) in stale)
    save_results(out_dir, {**recorded, **{system: {"path": path} for system, path in paths.items()}},
                 MODEL_PATHS_FILE)
    return dropped


def data_version(data_dir: str | Path, task: str, split: str) -> str:
    """What a task's evaluation data is, by content: the SHA-256 of its split file and its corpus (where it has
    one). Results measured on other data (a suite rebuilt with another seed, in place) are measured again."""
    digest = hashlib.sha256()
    for path in (Path(data_dir) / task / f"{split}.jsonl", Path(data_dir) / task / "corpus.jsonl"):
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def forget_other_data(out_dir: Path, data_dir: str | Path, tasks: Sequence[str], split: str) -> None:
    """Drop the cached results of each task whose data changed since they were measured (``data_version``); a
    task measured before the data was recorded keeps its results (as other settings recorded later are kept)."""
    stored = load_results(out_dir, DATA_VERSIONS_FILE)
    current = {task: {"sha256": data_version(data_dir, task, split)} for task in tasks}
    changed = {task for task, version in current.items() if stored.get(task, version) != version}
    if changed:
        drop_results(out_dir, lambda task, system: task in changed)
    save_results(out_dir, {**stored, **current}, DATA_VERSIONS_FILE)


def system_versions(models: dict[str, str], base: str | None, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """System -> task -> its model's version (``model_version``), so that a model retrained in place (or another
    base model under the same row names) since the cached results were measured is measured again."""
    from llm_embedder.models import model_version

    paths = dict(models)
    if base:
        paths.update({"base (no instructions)": base, "base (instructions)": base})
    seen: dict[str, Any] = {}
    for path in {path.replace("{task}", task) for path in paths.values() for task in tasks}:
        seen[path] = model_version(path)
    return {name: {task: seen[path.replace("{task}", task)] for task in tasks} for name, path in paths.items()}


def check_run_arguments(tasks: Any, systems: Any, **limits: Any) -> None:
    """Refuse what ``run_evaluation`` would misread: a string of tasks (one task per letter), systems that are
    not name -> factory (a path string failed as "'str' object is not callable"), a limit below 1 (-1 silently
    dropped the last query)."""
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a list of task names, got the string {tasks!r}; pass [{tasks!r}]")
    if not isinstance(systems, dict) or not all(callable(make) for make in systems.values()):
        raise TypeError("systems must map a name to a factory (task -> Ranker), as dense_systems({name: path}, ...) "
                        "builds them")
    for name, value in limits.items():
        least = 0 if name == "max_llm_queries" else 1  # 0 LLM queries: no LLM metric
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{name} must be a whole number of at least {least} (or None for all), got {value!r}")


def check_prompt_items(prompt_items: dict[str, int], label: str = "prompt_items") -> None:
    """Refuse a ``prompt_items`` override for a task without an LLM prompt, or of fewer than one item; ``label``
    names the setting in the message (the CLI's ``--prompt-items``)."""
    for task, count in prompt_items.items():
        if downstream_spec(task) is None:
            from llm_embedder.tasks import list_tasks

            problem = "has no LLM prompt; the tasks with one" if task in list_tasks() else (
                "is not a known task; the tasks with an LLM prompt")
            raise ValueError(f"{label}: task {task!r} {problem} are {', '.join(DOWNSTREAM)} and the user tasks "
                             "(registered ones, whose records carry answers)")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{label}: {task}={count!r}, expected a whole number of at least 1")


def run_evaluation(
    data_dir: str | Path,
    tasks: Sequence[str],
    systems: dict[str, Callable[[str], Ranker]],
    out_dir: str | Path,
    *,
    lm=None,
    load_lm: Callable[[], Any] | None = None,
    baselines: bool = True,
    gold: bool = False,
    teacher: bool = False,
    split: str = "test",
    max_queries: int | None = None,
    max_llm_queries: int | None = None,
    max_corpus: int | None = None,
    max_candidates: int | None = None,
    generate: bool = True,
    prompt_items: dict[str, int] | None = None,
    embed_fast: str | None = None,
    embed_max_length: int | None = None,
    cached_others: bool = True,
    versions: dict[str, dict[str, Any]] | None = None,
    model_paths: dict[str, str] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Evaluate every system (name -> factory(task) -> Ranker, or None to skip the task) and the baselines on
    each task; resumable. ``prompt_items`` (task -> n) puts n retrieved items in that task's LLM prompt instead
    of its ``DOWNSTREAM`` default. ``gold`` adds the ``GoldRanker`` row: the metrics with every labelled item
    found. ``teacher`` adds the ``TeacherRanker`` row on the tasks with per-query candidates and an LLM metric:
    the LLM's own choice, knowing the answer. ``embed_fast`` is the fast mode the caller built the dense systems with
    (``dense_systems(fast=...)``) and ``embed_max_length`` their tokens per text (``dense_systems(max_length=...)``,
    None: each model's saved length): both are kept with the settings, so results encoded otherwise are not mixed
    in. The results hold the systems asked for, then (``cached_others``) any others ``out_dir`` holds from earlier
    calls, so that models evaluated one call at a time share one table; without it, only those asked for.
    A user task (registered, not built in) whose records carry answers gets the LLM metric too (``downstream_spec``:
    its top 3 items in its reward template) and the ``none`` row; its main metric stays NDCG@10. One without answers
    gets retrieval metrics only, with a line saying so.
    ``versions`` (system -> task -> what its model is, e.g. ``models.model_version(path)``): a cached result
    measured with another version, or an unknown one, is measured again, so a model retrained in place is not
    reported stale. ``model_paths`` (system -> its model's folder) is recorded, so that a later call showing this
    system from the cache (``cached_others``) leaves its results out once that folder holds other weights
    (``forget_changed_others``, with a ``ModelChangedWarning``). ``load_lm``, in place of ``lm``, loads the LLM once
    every task's split and corpus is read and checked: a bad data folder is refused in seconds, not after a slow
    LLM load."""
    check_prompt_items(prompt_items or {})
    check_run_arguments(tasks, systems, max_queries=max_queries, max_llm_queries=max_llm_queries,
                        max_corpus=max_corpus, max_candidates=max_candidates)
    for asked, row in ((gold, GoldRanker.name), (teacher, TeacherRanker.name)):
        if asked and row in systems:
            raise ValueError(f"a system is named {row!r}, the name of the {row} row: rename it")
    baseline_rows = [r.name for r in (NoRetrieval, RandomRanker, BM25Ranker, RecencyRanker)]
    taken = [name for name in systems if baselines and name in baseline_rows]
    if taken:  # it was never evaluated: the baseline's cached row stood in for it
        raise ValueError(f"a system is named {taken[0]!r}, the name of a baseline row: rename it")
    if lm is not None and load_lm is not None:
        raise ValueError("give the LLM (lm) or a function that loads it (load_lm), not both")
    if teacher and lm is None and load_lm is None:
        raise ValueError("the teacher row needs the LLM (lm)")
    limits = dict(max_corpus=max_corpus, max_candidates=max_candidates)
    # every task's files read and checked before the LLM loads and any task is evaluated: a bad corpus or split of
    # the last task fails in seconds, not once the LLM has loaded and the others are done (they are let go of as each
    # task ends); and before anything is written to out_dir
    datasets = {task: load_task_data(data_dir, task, split, max_queries, **limits) for task in tasks}
    if load_lm is not None:
        lm = load_lm()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a second evaluation into the same folder (one started again while it runs) is refused: both would
    # rewrite the same caches
    with exclusive(out_dir / LOCK_FILE, f"the evaluation {out_dir}"):
        data_path = Path(data_dir).resolve()
        settings = {
            # relative to the results, so that a run dir moved or copied with its data keeps its cached results
            "data": os.path.relpath(data_path, out_dir.resolve()), "split": split, "max_queries": max_queries,
            "max_llm_queries": max_llm_queries, "max_corpus": max_corpus, "max_candidates": max_candidates,
            "generate": generate, "llm": getattr(lm, "name", None),
            "prompt_items": dict(sorted((prompt_items or {}).items())),
            # 2: LLM metric from the retrieval pass's rankings; 3: corpus slices keep hard negatives; 4: icl prompts
            # hold the top 8 examples (3 held 4); 5: scores independent of the prompts beside them
            # (downstream.eval_batch_tokens); 6: embedders keep embed_max_length tokens (5: 256, whatever the model
            # was trained at); 7: tool keys are their texts (the name was put before a text that begins with it);
            # 8: lrlm's chunks in document order (7 put them in rank order)
            "protocol": 8,
            "embed_max_length": embed_max_length or "saved",
        }
        if embed_fast:  # absent when exact, so results cached before the fast mode existed stay valid
            settings["embed_fast"] = embed_fast
        if getattr(lm, "version", None) is not None:  # an LLM fine-tuned in place measures anew
            settings["llm_version"] = lm.version
        settings_file = out_dir / SETTINGS_FILE
        try:
            stored = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.exists() else settings
        except (json.JSONDecodeError, UnicodeDecodeError):
            stored = None  # cut short by a kill while written: the results' settings are unknown, measure anew
        # settings written by earlier versions held the data's absolute path, and no llm_version
        same = as_recorded(settings, stored, ("llm_version",))
        if stored not in (same, {**same, "data": str(data_path)}):
            save_results(out_dir, {})  # measured under other settings: start over rather than mix them
            save_results(out_dir, {}, PER_QUERY_FILE)
        with atomic_write(settings_file) as handle:
            json.dump(settings, handle, indent=2)
        forget_other_data(out_dir, data_dir, tasks, split)
        if versions:
            forget_other_versions(out_dir, versions)
        if cached_others or model_paths:
            for line in forget_changed_others(out_dir, list(systems), model_paths or {}):
                warnings.warn(line, ModelChangedWarning, stacklevel=2)
        results = load_results(out_dir)
        per_query = load_results(out_dir, PER_QUERY_FILE)
        order: dict[str, list[str]] = {}  # per task, the systems in the order asked for
        with LoggedProgress() as progress:
            bar = progress.add_task("evaluating", total=len(tasks))
            # the LLM's prompts of the system in hand: its minutes (lrlm's long chunks, the teacher row) show as they go
            prompts_bar = progress.add_task("LLM prompts", total=None, visible=False)

            def prompts_done(done: int, total: int) -> None:
                progress.update(prompts_bar, completed=done, total=total, visible=True)
            for task in tasks:
                data = datasets.pop(task)
                user_task = is_user_task(task)
                llm_metric = lm is not None and judged_by_llm(data) and not (user_task and max_llm_queries == 0)
                if not any(data.golds) and not llm_metric:
                    progress.console.print(
                        f"task {task}: nothing to measure: no record has labelled items (pos_index) for the retrieval "
                        "metrics, and " + ("no LLM was given for the LLM metric" if lm is None else
                                           "the task has no LLM metric"),
                        markup=False, highlight=False, soft_wrap=True)
                if lm is not None and user_task and not any(data.answers):
                    progress.console.print(
                        f"task {task}: its records have no 'answers', so it gets retrieval metrics only (the LLM "
                        "metric scores a record's gold answer in the task's reward template)",
                        markup=False, highlight=False, soft_wrap=True)
                # a user task's rows cached by a version that gave it no LLM metric are measured again (the
                # built-in tasks' cached rows are kept: their protocol is unchanged)
                stale = llm_metric and user_task
                memo: dict = {}
                rankers = [(r.name, lambda r=r: r) for r in baseline_rankers(task, data.per_query, llm_metric)
                           ] if baselines else []
                if gold:
                    rankers.append((GoldRanker.name, lambda g=data.golds: GoldRanker(g)))
                if teacher and data.per_query and llm_metric:
                    rankers.append((TeacherRanker.name,
                                    lambda a=data.answers, m=memo: TeacherRanker(lm, a, m, progress=prompts_done)))
                rankers += [(name, lambda f=factory, t=task: f(t)) for name, factory in systems.items()]
                order[task] = [name for name, _ in rankers]
                for name, make in rankers:
                    cached = results.get(task, {}).get(name)
                    if cached is not None and not (stale and "gold_loglik" not in cached):
                        continue
                    progress.update(bar, description=f"{task}: {name}")
                    progress.update(prompts_bar, visible=False)
                    ranker = make()
                    if ranker is None:  # this system has no model for this task
                        continue
                    metrics, values = evaluate_system(
                        data, ranker, lm, generate=generate, llm_queries=max_llm_queries, memo=memo,
                        items=(prompt_items or {}).get(task), progress=prompts_done,
                    )
                    per_query.setdefault(task, {})[name] = values
                    save_results(out_dir, per_query, PER_QUERY_FILE)
                    results.setdefault(task, {})[name] = metrics
                    save_results(out_dir, results)
                progress.advance(bar)
        return in_order(results, order, others=cached_others)

def in_order(results: dict[str, dict[str, Any]], order: dict[str, list[str]],
             others: bool = True) -> dict[str, dict[str, Any]]:
    """Tasks and systems in the order they were asked for (``order``: task -> systems), then (``others``) any
    others held in the cache, so that a resumed run's table reads like a fresh one's (the cache's JSON has sorted
    keys)."""
    out = {}
    for task in [*order, *(t for t in results if t not in order and others)]:
        if task in results:
            systems, asked = results[task], order.get(task, [])
            names = [n for n in asked if n in systems] + [n for n in systems if n not in asked and others]
            if names:
                out[task] = {name: systems[name] for name in names}
    return out
