"""Turning task records into (prompt, answer) pairs through each task's ``reward_template``.

Candidates are ``pos`` then ``neg`` (or the ``history`` turns, for chat-style records); the prompt is the
template's text before ``{answer}`` with the candidate as ``{key}``; the answer is the record's first
``answers`` item (the reference code samples one at random; the first keeps runs reproducible). lrlm needs no
special case: its template ``{key}\\n{query}{answer}`` puts the candidate chunk, then the query chunk, before
the target chunk (the reference concatenates the tokens; the template joins them with a newline). A prompt
that would not fit the LM's window is cut on the candidate (key) side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from llm_embedder.io import DataError
from llm_embedder.tasks import Task, UnknownTaskError, get_task


@dataclass
class RecordPairs:
    """The pairs to score for one record (empty ``prompts`` means skipped: no candidates)."""

    line: int
    task: Task
    query: str
    answer: str
    prompts: list[str] = field(default_factory=list)
    truncated: int = 0


class RecordError(DataError):
    """A record that scoring cannot use; ``line`` and ``field`` say where (the message names them too)."""

    def __init__(self, where: str, line: int, field: str, message: str):
        super().__init__(f"{where}: {message}")
        self.line, self.field = line, field


def split_template(template: str) -> str:
    """The part of a reward template before ``{answer}`` (text after the answer cannot change its score)."""
    return template.partition("{answer}")[0]


def record_candidates(record: dict[str, Any], where: str, line: int = 0) -> list[str]:
    """pos + neg, or the history turns when the record has a non-empty ``history``."""
    if record.get("history"):
        names = ["history"]
    else:
        names = ["pos", "neg"]
    candidates: list[str] = []
    for name in names:
        value = record.get(name) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecordError(where, line, name, f"field {name!r} must be a list of strings")
        candidates.extend(value)
    return candidates


def record_task(record: dict[str, Any], default_task: str | None, where: str, line: int = 0) -> Task:
    name = record.get("task", default_task)
    if name is None:
        raise RecordError(where, line, "task", "field 'task' is missing (set it in the record or pass --task)")
    try:
        return get_task(name)
    except UnknownTaskError as err:
        raise RecordError(where, line, "task", f"field 'task': {err}") from None


def record_answer(record: dict[str, Any], where: str, line: int = 0) -> str:
    answers = record.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not answers:
        raise RecordError(where, line, "answers",
                          "field 'answers' is missing or empty; the reward template scores an answer")
    if not isinstance(answers, list) or not isinstance(answers[0], str) or not answers[0].strip():
        raise RecordError(where, line, "answers", "field 'answers' must be a list of non-empty strings")
    return answers[0]


def scorable_parts(record: dict[str, Any], line: int, source: str,
                   default_task: str | None = None) -> tuple[Task, str, list[str], str]:
    """A record's task, query, candidates and answer ('' without candidates), checked; ``RecordError`` names the
    first of them that is wrong."""
    where = f"{source}:{line}"
    task = record_task(record, default_task, where, line)
    query = record.get("query")
    if not isinstance(query, str):
        raise RecordError(where, line, "query", "field 'query' must be a string")
    candidates = record_candidates(record, where, line)
    return task, query, candidates, record_answer(record, where, line) if candidates else ""


def unscorable(record: dict[str, Any], line: int, source: str, default_task: str | None = None) -> RecordError | None:
    """What keeps one record from being scored (the first of its task, query, candidates, answer), or None: the
    checks of ``build_record_pairs``, without a tokenizer."""
    try:
        scorable_parts(record, line, source, default_task)
    except RecordError as err:
        return err
    return None


class KeyFitter:
    """Cuts the key so prompt + answer fit ``max_length`` tokens (and the key fits ``key_max_tokens``)."""

    def __init__(self, tokenizer: Any, max_length: int, key_max_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.key_max_tokens = key_max_tokens

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def fit(self, prefix: str, key: str, query: str, answer: str) -> tuple[str, bool]:
        """The prompt with a possibly shortened key, and whether it was shortened."""
        prompt = prefix.format(key=key, query=query)
        # every token covers at least one byte, so a short text needs no tokenisation at all
        if self.key_max_tokens is None and len((prompt + answer).encode()) + 4 <= self.max_length:
            return prompt, False
        key_ids = self.tokenizer(key, add_special_tokens=False)["input_ids"]
        budget = len(key_ids)
        if self.key_max_tokens is not None:
            budget = min(budget, self.key_max_tokens)
        if budget == len(key_ids) and self.count(prompt + answer) <= self.max_length:
            return prompt, False
        other = self.count(prefix.format(key="", query=query) + answer)
        budget = max(0, min(budget, self.max_length - other - 2))
        while True:
            short = self.tokenizer.decode(key_ids[:budget])
            prompt = prefix.format(key=short, query=query)
            if budget == 0 or self.count(prompt + answer) <= self.max_length:
                return prompt, True
            budget = max(0, budget - 8)


def build_record_pairs(
    record: dict[str, Any],
    line: int,
    source: str,
    fitter: KeyFitter,
    default_task: str | None = None,
) -> RecordPairs:
    """Validate one record and build its (prompt, answer) pairs; errors name ``source:line`` and the field."""
    task, query, candidates, answer = scorable_parts(record, line, source, default_task)
    pairs = RecordPairs(line=line, task=task, query=query, answer=answer)
    if not candidates:
        return pairs
    prefix = split_template(task.reward_template)
    for key in candidates:
        prompt, cut = fitter.fit(prefix, key, query, pairs.answer)
        pairs.prompts.append(prompt)
        pairs.truncated += int(cut)
    return pairs


def pair_all(
    numbered: Sequence[tuple[int, dict[str, Any]]],
    source: str,
    fitter: KeyFitter,
    default_task: str | None = None,
    on_record: Callable[[], None] | None = None,
) -> tuple[list[RecordPairs], list[str]]:
    """``build_record_pairs`` over every (line, record): the records that make prompts, and a line for each that
    cannot (so that one error can name them all)."""
    out, problems = [], []
    for line, record in numbered:
        try:
            out.append(build_record_pairs(record, line, source, fitter, default_task))
        except DataError as err:
            problems.append(str(err))
        if on_record is not None:
            on_record()
    return out, problems


def build_all(
    numbered: Sequence[tuple[int, dict[str, Any]]],
    source: str,
    fitter: KeyFitter,
    default_task: str | None = None,
    on_record: Callable[[], None] | None = None,
) -> list[RecordPairs]:
    """``pair_all`` that refuses the input, naming every bad record, before any scoring."""
    from llm_embedder.data.validate import raise_problems

    out, problems = pair_all(numbered, source, fitter, default_task, on_record)
    raise_problems(problems, source)
    return out
