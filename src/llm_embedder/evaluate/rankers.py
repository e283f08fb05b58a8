"""The retrievers compared in an evaluation: dense (any embedder), BM25, random, recency, none, and two reference
rows, not competitors: gold (the labelled items first) and teacher (the LLM's own ranking, knowing the answer).

Each ranks, per query, either a shared corpus or the query's own candidates (chat history turns,
earlier lrlm chunks). They share one method: ``rank(task, queries, candidates, k)`` where ``candidates``
is one list of texts for all queries (a corpus) or one list per query.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import numpy as np

from llm_embedder.evaluate.downstream import memo_logprobs, prompt_prefix
from llm_embedder.tasks import get_task

Candidates = Sequence[str] | Sequence[Sequence[str]]


def is_per_query(candidates: Candidates) -> bool:
    return len(candidates) > 0 and not isinstance(candidates[0], str)


class Ranker(Protocol):
    name: str

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        """Top-k candidate indices per query, best first."""


def top_k(scores: np.ndarray, k: int) -> list[int]:
    k = min(k, len(scores))
    if k == 0:
        return []
    part = np.argpartition(-scores, k - 1)[:k]
    return [int(i) for i in part[np.argsort(-scores[part], kind="stable")]]


class DenseRanker:
    """Inner product of an ``Embedder``'s query and key vectors (both carry the task's instructions).

    Encoding is quiet: the evaluation shows its own progress, and an encoder's bar would print into its log."""

    def __init__(self, embedder, name: str | None = None):
        self.embedder = embedder
        self.name = name or f"dense:{embedder.name}"
        self._corpus_cache: dict[tuple[str, int, int], np.ndarray] = {}

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        query_vectors = self.embedder.encode_queries(list(queries), task, show_progress=False)
        if not is_per_query(candidates):
            keys = self._corpus_vectors(task, candidates)
            return [top_k(row, k) for row in query_vectors @ keys.T]
        # queries of one conversation or book share most of their candidates: encode each text once
        unique: dict[str, int] = {}
        rows = [[unique.setdefault(text, len(unique)) for text in group] for group in candidates]
        key_vectors = self.embedder.encode_keys(list(unique), task, show_progress=False)
        return [top_k(key_vectors[row] @ vector, k) for vector, row in zip(query_vectors, rows, strict=True)]

    def _corpus_vectors(self, task: str, corpus: Sequence[str]) -> np.ndarray:
        key = (task, id(corpus), len(corpus))
        if key not in self._corpus_cache:
            self._corpus_cache[key] = self.embedder.encode_keys(list(corpus), task, show_progress=False)
        return self._corpus_cache[key]


class BM25Ranker:
    """Okapi BM25 from the ``bm25s`` library (k1=0.82, b=0.68 as in the reference evaluation)."""

    name = "bm25"

    def __init__(self, k1: float = 0.82, b: float = 0.68):
        self.k1, self.b = k1, b

    def _index(self, texts: Sequence[str]):
        import bm25s

        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
        return retriever

    def _scores(self, retriever, query: str, n_docs: int) -> np.ndarray:
        import bm25s

        tokenized = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)
        tokens = tokenized[0] if tokenized else []
        if not tokens:  # only stopwords or one-letter words: nothing to match, every document scores 0
            return np.zeros(n_docs, dtype=np.float64)
        return np.asarray(retriever.get_scores(tokens), dtype=np.float64)[:n_docs]

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        if not is_per_query(candidates):
            retriever = self._index(candidates)
            return [top_k(self._scores(retriever, q, len(candidates)), k) for q in queries]
        rankings = []
        for query, group in zip(queries, candidates, strict=True):
            if not group:
                rankings.append([])
                continue
            retriever = self._index(group)
            rankings.append(top_k(self._scores(retriever, query, len(group)), k))
        return rankings


class RandomRanker:
    """Uniformly random candidates (seeded per query, so every run draws the same)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        rankings = []
        for i in range(len(queries)):
            n = len(candidates[i]) if is_per_query(candidates) else len(candidates)
            rng = np.random.default_rng([self.seed, i])
            rankings.append([int(j) for j in rng.permutation(n)[:k]])
        return rankings


class RecencyRanker:
    """The most recent candidates first (per-query candidates are in chronological order)."""

    name = "recency"

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        if not is_per_query(candidates):
            raise ValueError("recency needs per-query candidates (chat history, earlier chunks), not a corpus")
        return [list(range(len(group) - 1, -1, -1))[:k] for group in candidates]


class NoRetrieval:
    """Retrieves nothing: the LLM answers from the query alone."""

    name = "none"

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        return [[] for _ in queries]


class GoldRanker:
    """The labelled relevant candidates first (in their listed order), then the rest in a fallback ranker's order.

    Not a retriever but a reference: what the LLM metric reads when every labelled item is found. Above the
    retrievers, it shows how far retrieval can still move the metric; at or below one of them, that the LLM
    does not find the labelled items the most useful, so the labels do not say what helps it. ``golds`` holds one
    list of candidate ids per query, as ``TaskData.golds``; the fallback (BM25 by default) fills the prompt's other
    slots so that the LLM sees as many items as with any other system.
    """

    name = "gold"

    def __init__(self, golds: Sequence[Sequence[int]], fallback: Ranker | None = None):
        self.golds = [list(dict.fromkeys(gold)) for gold in golds]
        self.fallback = fallback or BM25Ranker()

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        if len(self.golds) != len(queries):
            raise ValueError(f"task {task}: gold ranker holds labels for {len(self.golds)} queries, "
                             f"asked to rank {len(queries)}")
        depth = k + max((len(gold) for gold in self.golds), default=0)
        others = self.fallback.rank(task, queries, candidates, depth)
        return [(gold + [i for i in rest if i not in gold])[:k] for gold, rest in zip(self.golds, others, strict=True)]


class TeacherRanker:
    """A query's own candidates ranked by the LLM: each alone in the task's prompt, by the gold answer's mean
    log-likelihood (the reward's score, scored as the evaluation scores).

    Not a retriever but a reference: it knows the answer. With one item in the prompt (chat) its LLM metric is
    the best any retriever can reach by choosing that item; with several (lrlm's two chunks) it takes the best
    items one by one, a reference rather than a bound. A shared corpus (qa's passages, icl's examples) would cost
    an LLM pass per document and query, so only a query's own candidates (chat turns, earlier lrlm chunks) are
    ranked. ``memo`` ((prompt, answer) -> log-likelihood, as ``downstream_metrics``'s) is filled with the scores,
    so the prompts the LLM metric then asks for again are not scored twice. ``progress(done, total)`` follows the
    prompts scored.
    """

    name = "teacher"

    def __init__(self, lm: Any, answers: Sequence[Sequence[str]], memo: dict | None = None,
                 progress: Callable[[int, int], None] | None = None):
        self.lm = lm
        self.answers = answers
        self.memo = {} if memo is None else memo
        self.progress = progress

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        if not is_per_query(candidates):
            raise ValueError(f"task {task}: the teacher ranks a query's own candidates (chat turns, earlier chunks), "
                             "not a shared corpus")
        if len(self.answers) != len(queries):
            raise ValueError(f"task {task}: teacher ranker holds answers for {len(self.answers)} queries, "
                             f"asked to rank {len(queries)}")
        template = get_task(task).reward_template
        pairs = []
        for i, (query, group, answers) in enumerate(zip(queries, candidates, self.answers, strict=True)):
            if group and not answers:
                raise ValueError(f"task {task}: query {i} has candidates but no answer for the teacher to score")
            pairs.append([(prompt_prefix(template, text, query), answers[0]) for text in group])
        scores = memo_logprobs(self.lm, [pair for group in pairs for pair in group], self.memo,
                               progress=self.progress)
        if not np.isfinite(scores).all():
            raise ValueError(f"task {task}: the LLM returned non-finite log-likelihoods for the teacher")
        ends = np.cumsum([len(group) for group in pairs])
        return [top_k(scores[end - len(group):end], k) for group, end in zip(pairs, ends, strict=True)]


def dense_systems(
    models: dict[str, str], base: str | None, device: str | None, plain: Collection[str] = (),
    fast: str | None = None, max_length: int | None = None,
) -> dict:
    """name -> factory(task) -> DenseRanker; embedders are loaded once per path.

    A ``{task}`` in a path is filled per task; models named in ``plain`` embed without instructions; ``fast``
    is every embedder's CPU fast mode (``Embedder(fast=...)``); ``max_length`` the tokens every embedder keeps
    of a query or key (default: each model's saved length).
    """
    from llm_embedder.embedder import Embedder

    cache: dict[tuple[str, bool], Embedder] = {}

    def ranker(path: str, instructions: bool = True):
        def make(task: str) -> DenseRanker:
            resolved = path.replace("{task}", task)
            if (resolved, instructions) not in cache:
                cache[(resolved, instructions)] = Embedder(
                    resolved, device=device, use_instructions=instructions, fast=fast,
                    query_max_length=max_length, key_max_length=max_length,
                )
            return DenseRanker(cache[(resolved, instructions)])

        return make

    systems = {}
    if base:
        systems["base (no instructions)"] = ranker(base, instructions=False)
        systems["base (instructions)"] = ranker(base)
    taken = [name for name in models if name in systems]
    if taken:  # it silently replaced the base model's row
        raise ValueError(f"a model is named {taken[0]!r}, the name of a base model row: rename it")
    systems.update({name: ranker(path, instructions=name not in plain) for name, path in models.items()})
    return systems
