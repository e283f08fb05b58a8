"""Stores for the paper's scenarios, each a small class over ``Retriever``: knowledge (qa), conversation
memory (chat), in-context examples (icl) and conversational search (convsearch).

Every store has ``prompt(...)``, which retrieves and calls ``augment`` with the task's layout.
An empty store retrieves nothing (no error): an application starts with empty memories.
A store given an ``index_dir`` keeps its documents there; reopened from it, it rebuilds its state (turns,
chunks, tools) from the documents the index holds, and numbering continues after them. Documents given to a
reopened store's constructor are added only where the index does not hold them already (``add`` always adds).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_embedder.augment.prompt import augment, get_layout, token_counter
from llm_embedder.index.base import check_k
from llm_embedder.retriever import Hit, Retriever, check_queries, normalise_documents, refuse_a_string


class _Store:
    """Shared plumbing: a Retriever for one task, searched only when it holds something."""

    task = "qa"

    def __init__(self, embedder: Any, *, index_dir: str | Path | None = None, factory: str = "Flat") -> None:
        self.embedder = embedder
        if index_dir is not None and (Path(index_dir) / "meta.json").exists():
            self.retriever = Retriever.load(index_dir, embedder)
            if self.retriever.task != self.task:  # its vectors and instructions are another task's
                raise ValueError(f"{index_dir} holds an index for task {self.retriever.task!r}, but "
                                 f"{type(self).__name__} stores task {self.task!r}; give it its own index_dir")
        else:
            self.retriever = Retriever.build(embedder, self.task, [], out_dir=index_dir, factory=factory)

    def __len__(self) -> int:
        return len(self.retriever)

    def save(self) -> None:
        """Write the store's index file now (``Retriever.save``): a store on an ``index_dir`` journals its adds, and
        the file, a checkpoint, catches up every 10% of documents; ``load`` reads the rest from the journals."""
        self.retriever.save()

    def close(self) -> None:
        """Save what the index file lacks and release the index (``Retriever.close``); also on leaving ``with``."""
        self.retriever.close()

    def __enter__(self) -> _Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_missing(self, documents: Sequence[str | dict]) -> list[int]:
        """Add the documents the index does not hold yet, so that reopening a store with the documents it was
        built from does not index them twice (each held copy matches one given document, so repeats count)."""
        docs = normalise_documents(documents)
        with self.retriever.lock:  # what is held, then the rest added: no other thread's add between the two
            if not docs or len(self.retriever) == 0:
                return self.retriever.add(docs)
            held = Counter(_identity(doc) for _, doc in self.retriever.documents())
            new = []
            for doc in docs:
                if held[_identity(doc)] > 0:
                    held[_identity(doc)] -= 1
                else:
                    new.append(doc)
            return self.retriever.add(new)

    def _held(self, field: str) -> list[tuple[int, dict]]:
        """The documents a reopened store holds, ordered by their number in ``field`` (turn, position); one
        without it is refused, since the store could not place it."""
        held = self.retriever.documents()
        for i, doc in held:
            value = doc.get(field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"{self.retriever.out_dir}: document {i} has no {field!r} number (got {value!r}), so "
                    f"{type(self).__name__} cannot place it; open this index with the store that wrote it"
                )
        return sorted(held, key=lambda item: item[1][field])

    def _search(self, query: str, k: int, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        check_k(k)  # a bad k is refused on an empty store as on a full one
        if len(self.retriever) == 0:
            return []
        return self.retriever.search(query, k=k, filter=filter)[0]


def _identity(doc: dict) -> str:
    """A document as docs.jsonl keeps it, fields in any order: equal for the same text and fields."""
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


class KnowledgeBase(_Store):
    """Documents to look facts up in (task ``qa``); the prompt starts with ``Knowledge: ...``."""

    task = "qa"

    def __init__(self, embedder: Any, documents: Sequence[str | dict] = (), **kwargs: Any) -> None:
        refuse_a_string(documents)  # before an index_dir is made for it
        super().__init__(embedder, **kwargs)
        self._add_missing(documents)

    def add(self, documents: Sequence[str | dict]) -> list[int]:
        """Add documents (strings, or dicts with ``text`` and optional filterable fields)."""
        return self.retriever.add(documents)

    def search(self, query: str, k: int = 3, filter: Mapping[str, Any] | None = None) -> list[Hit]:
        return self._search(query, k, filter)

    def prompt(self, query: str, k: int = 3, budget_tokens: int = 1024, tokenizer: Any = None) -> str:
        return augment(self.task, query, self.search(query, k), budget_tokens, tokenizer)


class ConversationMemory(_Store):
    """Past turns of a conversation (task ``chat``): add turns as they happen, retrieve the relevant ones.

    Falls back to recency (the most recent turns) when the memory holds ``k`` turns or fewer, or when no
    turn scores at least ``min_score``.
    """

    task = "chat"

    def __init__(self, embedder: Any, *, min_score: float = 0.5, **kwargs: Any) -> None:
        super().__init__(embedder, **kwargs)
        self.min_score = min_score
        held = self._held("turn")  # reopened: the turns the index holds, oldest first
        self.turns: list[str] = [doc["text"] for _, doc in held]
        self._numbers: list[int] = [doc["turn"] for _, doc in held]  # turn number of each of self.turns
        self._ids: list[int] = [i for i, _ in held]  # index id of each of self.turns
        # numbers go on after every turn ever stored, forgotten ones too: a number names one turn only
        every = self.retriever.docs.get(range(len(self.retriever.docs)))
        self._next = 1 + max((d["turn"] for d in every if isinstance(d.get("turn"), int)), default=-1)

    def add_turn(self, user: str, assistant: str) -> int:
        """Remember one exchange; returns its turn number (one after the last turn stored)."""
        text = f"Speaker 1: {user}\nSpeaker 2: {assistant}"
        with self.retriever.lock:  # two threads' turns get two numbers
            turn = self._next
            self._ids.extend(self.retriever.add([{"text": text, "turn": turn}]))
            self.turns.append(text)
            self._numbers.append(turn)
            self._next = turn + 1
        return turn

    def forget(self, turns: Sequence[int]) -> int:
        """Remove these turns (numbers from ``add_turn``) from the memory: neither retrieval nor recency returns
        them again. Returns how many were removed. With an ``index_dir``, the text stays in its docs.jsonl (as
        ``Retriever.delete`` leaves it); an index that cannot delete (HNSW) refuses and keeps them all."""
        refuse_a_string(turns, "turns")
        with self.retriever.lock:
            where = {number: i for i, number in enumerate(self._numbers)}
            unknown = [t for t in turns if t not in where]
            if unknown:
                raise ValueError(f"no turn numbered {', '.join(map(repr, unknown))} in this memory")
            gone = sorted({where[t] for t in turns})
            self.retriever.delete([self._ids[i] for i in gone])
            for i in reversed(gone):
                del self.turns[i], self._numbers[i], self._ids[i]
        return len(gone)

    def recent(self, n: int = 1) -> list[Hit]:
        """The last ``n`` turns, oldest first (score NaN: chosen by recency)."""
        first = max(0, len(self.turns) - n)
        return [Hit(id=self._numbers[i], score=math.nan, text=self.turns[i],
                    metadata={"turn": self._numbers[i], "recency": True}) for i in range(first, len(self.turns))]

    def retrieve(self, query: str, k: int = 1) -> list[Hit]:
        """The ``k`` most relevant past turns, or the ``k`` most recent when nothing is relevant enough. A blank query
        is refused, however many turns there are (it passed while they were ``k`` or fewer)."""
        check_k(k)
        check_queries([query])
        if len(self.turns) <= k:
            return self.recent(k)
        relevant = [hit for hit in self._search(query, k) if hit.score >= self.min_score]
        return relevant or self.recent(k)

    def prompt(self, query: str, k: int = 1, budget_tokens: int = 1024, tokenizer: Any = None) -> str:
        return augment(self.task, query, self.retrieve(query, k), budget_tokens, tokenizer)


class ExampleBank(_Store):
    """Demonstrations for in-context learning (task ``icl``); formatted ``{input}\\n{output}`` by default."""

    task = "icl"

    def __init__(
        self, embedder: Any, examples: Sequence[str | dict] = (), *, template: str = "{input}\n{output}",
        **kwargs: Any,
    ) -> None:
        _check_template(template)  # before super().__init__ creates index_dir
        refuse_a_string(examples, "examples")
        super().__init__(embedder, **kwargs)
        self.template = template
        self._add_missing(self._format(examples))

    def add(self, examples: Sequence[str | dict]) -> list[int]:
        """Add examples: ready strings, or dicts formatted with ``template`` (or having ``text``)."""
        refuse_a_string(examples, "examples")  # one example per character otherwise
        return self.retriever.add(self._format(examples))

    def _format(self, examples: Sequence[str | dict]) -> list[str | dict]:
        """The examples as documents: a dict without ``text`` gets the ``template`` filled with its fields."""
        docs = []
        for i, example in enumerate(examples):
            if isinstance(example, dict) and "text" not in example:
                try:
                    example = {**example, "text": self.template.format(**example)}
                except KeyError as err:
                    raise ValueError(f"examples[{i}]: missing field {err.args[0]!r} for {self.template!r}") from None
                except (AttributeError, IndexError, TypeError, ValueError) as err:
                    raise ValueError(f"examples[{i}]: cannot fill template {self.template!r} "
                                     f"({type(err).__name__}: {err})") from None
            docs.append(example)
        return docs

    def retrieve(self, query: str, k: int = 8) -> list[Hit]:
        return self._search(query, k)

    def prompt(self, query: str, k: int = 8, budget_tokens: int = 1024, tokenizer: Any = None) -> str:
        """Demonstrations most-similar-last, then the query (lowest-ranked dropped first to fit)."""
        return augment(self.task, query, self.retrieve(query, k), budget_tokens, tokenizer)


def _check_template(template: str) -> None:
    """Refuse an example template that ``template.format(**example)`` cannot fill whatever the example: one
    that does not parse, or with a positional field (``{}``, ``{0}``) where each field must name a key."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"template {template!r}: {err}") from None
    for name in names:
        key = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not key or key.isdigit():
            raise ValueError(f"template {template!r}: field {{{name}}} is positional; name an example's field, "
                             "as in '{input}\\n{output}'")


class ConversationalSearch(_Store):
    """Search passages with the whole conversation as the query (task ``convsearch``).

    The query is the previous questions and answers joined by spaces, the current question last. A long
    conversation keeps its most recent part: what the embedder can encode (it cuts a query at its max length, from
    the end, which would cut the current question), and in a prompt at most half the budget (the rest is for the
    passages).
    """

    task = "convsearch"

    def __init__(self, embedder: Any, documents: Sequence[str | dict] = (), **kwargs: Any) -> None:
        refuse_a_string(documents)  # before an index_dir is made for it
        super().__init__(embedder, **kwargs)
        self.history: list[str] = []
        self._add_missing(documents)

    def add(self, documents: Sequence[str | dict]) -> list[int]:
        return self.retriever.add(documents)

    def add_turn(self, question: str, answer: str | None = None) -> None:
        """Record a finished exchange (the answer is optional)."""
        self.history.append(question)
        if answer:
            self.history.append(answer)

    def reset(self) -> None:
        self.history.clear()

    def query_for(self, question: str, fits: Callable[[str], bool] | None = None) -> str:
        """The conversation as one query, the current question last; with ``fits``, the oldest turns are left out
        until it fits (the question itself always stays)."""
        start = 0
        while fits is not None and start < len(self.history) and not fits(" ".join([*self.history[start:], question])):
            start += 1
        return " ".join([*self.history[start:], question])

    def _encodable(self, query: str) -> bool:
        """Whether the embedder keeps all of ``query`` (an embedder that cannot count is trusted)."""
        embedder = self.retriever.embedder
        limit = getattr(embedder, "query_max_length", None)
        if limit is None or not hasattr(embedder, "count_tokens"):
            return True
        return embedder.count_tokens([query], self.task, "query", truncate=False) <= limit

    def search(self, question: str, k: int = 3) -> list[Hit]:
        return self._search(self.query_for(question, self._encodable), k)

    def prompt(self, question: str, k: int = 3, budget_tokens: int = 1024, tokenizer: Any = None) -> str:
        count = token_counter(tokenizer)
        layout = get_layout(self.task)
        query = self.query_for(question, lambda text: count(layout.render(text, [])) <= budget_tokens // 2)
        return augment(self.task, query, self.search(question, k), budget_tokens, tokenizer)
