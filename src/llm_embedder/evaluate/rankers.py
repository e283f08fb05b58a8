"""The retrievers compared in an evaluation: dense (any embedder), BM25, random, recency, none, and gold (the
labelled items first: a reference row, not a competitor).

Each ranks, per query, either a shared corpus or the query's own candidates (chat history turns,
earlier lrlm chunks). They share one method: ``rank(task, queries, candidates, k)`` where ``candidates``
is one list of texts for all queries (a corpus) or one list per query.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

import numpy as np

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
    """Inner product of an ``Embedder``'s query and key vectors (both carry the task's instructions)."""

    def __init__(self, embedder, name: str | None = None):
        self.embedder = embedder
        self.name = name or f"dense:{embedder.name}"
        self._corpus_cache: dict[tuple[str, int, int], np.ndarray] = {}

    def rank(self, task: str, queries: Sequence[str], candidates: Candidates, k: int) -> list[list[int]]:
        query_vectors = self.embedder.encode_queries(list(queries), task)
        if not is_per_query(candidates):
            keys = self._corpus_vectors(task, candidates)
            return [top_k(row, k) for row in query_vectors @ keys.T]
        # queries of one conversation or book share most of their candidates: encode each text once
        unique: dict[str, int] = {}
        rows = [[unique.setdefault(text, len(unique)) for text in group] for group in candidates]
        key_vectors = self.embedder.encode_keys(list(unique), task)
        return [top_k(key_vectors[row] @ vector, k) for vector, row in zip(query_vectors, rows, strict=True)]

    def _corpus_vectors(self, task: str, corpus: Sequence[str]) -> np.ndarray:
        key = (task, id(corpus), len(corpus))
        if key not in self._corpus_cache:
            self._corpus_cache[key] = self.embedder.encode_keys(list(corpus), task)
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

        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
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


def dense_systems(
    models: dict[str, str], base: str | None, device: str | None, plain: Collection[str] = (),
    fast: str | None = None,
) -> dict:
    """name -> factory(task) -> DenseRanker; embedders are loaded once per path.

    A ``{task}`` in a path is filled per task; models named in ``plain`` embed without instructions; ``fast``
    is every embedder's CPU fast mode (``Embedder(fast=...)``).
    """
    from llm_embedder.embedder import Embedder

    cache: dict[tuple[str, bool], Embedder] = {}

    def ranker(path: str, instructions: bool = True):
        def make(task: str) -> DenseRanker:
            resolved = path.replace("{task}", task)
            if (resolved, instructions) not in cache:
                cache[(resolved, instructions)] = Embedder(
                    resolved, device=device, use_instructions=instructions, fast=fast
                )
            return DenseRanker(cache[(resolved, instructions)])

        return make

    systems = {}
    if base:
        systems["base (no instructions)"] = ranker(base, instructions=False)
        systems["base (instructions)"] = ranker(base)
    systems.update({name: ranker(path, instructions=name not in plain) for name, path in models.items()})
    return systems
