"""Cheap, deterministic lexical search (BM25 via bm25s) for hard negatives and lexical relatedness."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import bm25s
import numpy as np


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens without English stopwords."""
    return bm25s.tokenize(list(texts), return_ids=False, show_progress=False)


class LexicalIndex:
    """BM25 over a fixed list of texts; ``search`` returns positions ranked by score (ties: lower position)."""

    def __init__(self, texts: Sequence[str]):
        self.size = len(texts)
        self.model = bm25s.BM25()
        self.model.index(tokenize(texts), show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """The top-k positions with a positive score for each query."""
        if not queries:
            return []
        k = min(k, self.size)
        query_tokens = [tokens or ["\x00"] for tokens in tokenize(queries)]
        docs, scores = self.model.retrieve(query_tokens, k=k, show_progress=False, n_threads=1)
        results = []
        for row_docs, row_scores in zip(docs, scores, strict=True):
            ranked = sorted(
                ((float(s), int(d)) for d, s in zip(row_docs, row_scores, strict=True) if s > 0),
                key=lambda pair: (-pair[0], pair[1]),
            )
            results.append([d for _, d in ranked])
        return results


def pick(ranked: Iterable[int], exclude: set[int] | frozenset[int], n: int) -> list[int]:
    """The first n ranked positions not excluded (order kept, no repeats)."""
    chosen: list[int] = []
    for position in ranked:
        if position not in exclude and position not in chosen:
            chosen.append(position)
            if len(chosen) == n:
                break
    return chosen


def overlap_scores(query: str, texts: Sequence[str]) -> np.ndarray:
    """BM25 scores of each text for one query (for small, per-record candidate lists)."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    model = bm25s.BM25()
    model.index(tokenize(texts), show_progress=False)
    tokens = [t for t in tokenize([query])[0] if t in model.vocab_dict]
    if not tokens:
        return np.zeros(len(texts), dtype=np.float32)
    return np.asarray(model.get_scores(tokens), dtype=np.float32)
