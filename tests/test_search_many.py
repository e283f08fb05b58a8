"""Retriever.search_vectors_many (the server's index search of a model batch's requests together) gives each request
the hits search_vectors gives it alone, over every backend kind, filter, k, padding and error, in fewer index calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_embedder.retriever import Retriever

TOPICS = ["rivers", "mountains", "cities", "music", "cooking", "space", "football"]
LANGS = ["en", "fr", "de"]
KS = [1, 2, 3, 5, 10, 100]  # 100: more than the index holds (rows padded)
FILTERS = [None, None, {"lang": "en"}, {"lang": ["fr", "de"]}, {"n": 3}, {"lang": "xx"}]  # "xx": matches nothing


def corpus(n: int = 60, duplicates: int = 4) -> list[dict]:
    docs = [{"text": f"Document {i} is about {TOPICS[i % 7]} and {TOPICS[(i * 3) % 7]}.", "lang": LANGS[i % 3],
             "n": i % 5} for i in range(n)]
    return docs + [dict(docs[i]) for i in range(duplicates)]  # the same text: the same vector, scores that tie


def count_searches(retriever: Retriever) -> list[int]:
    """Record the query rows of every index search the retriever makes."""
    calls: list[int] = []
    search = retriever.index.search

    def counted(vectors, *args, **kwargs):
        calls.append(len(vectors))
        return search(vectors, *args, **kwargs)

    retriever.index.search = counted
    return calls


def alone(retriever: Retriever, vectors: np.ndarray, options: dict):
    try:
        return retriever.search_vectors(vectors, **options)
    except Exception as err:  # noqa: BLE001 - compared with what search_vectors_many returns
        return err


def assert_same(got, want) -> None:
    """One request's result: the same hits (ids, order, texts, metadata; scores to float tolerance) or error."""
    if isinstance(want, Exception):
        assert type(got) is type(want) and str(got) == str(want)
        return
    assert not isinstance(got, Exception), got
    assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want]
    assert [[(h.text, h.metadata) for h in row] for row in got] == [[(h.text, h.metadata) for h in row] for row in want]
    for row, want_row in zip(got, want, strict=True):
        assert [h.score for h in row] == pytest.approx([h.score for h in want_row], abs=1e-5)


def requests_for(embedder, effort: dict) -> list[tuple[np.ndarray, dict]]:
    """24 requests of 1 to 3 queries (random ones and duplicated documents' own texts, whose hits tie), every k and
    filter, half with the search effort; then requests search_vectors refuses."""
    rng = np.random.default_rng(1)
    random = rng.standard_normal((30, embedder.dim)).astype(np.float32)
    tied = embedder.encode_queries([d["text"] for d in corpus()[:4]], "qa")
    rows = np.concatenate([tied, random])
    out, start = [], 0
    for i in range(24):
        n = 1 + i % 3
        options = {"k": KS[i % len(KS)], "filter": FILTERS[(i // 2) % len(FILTERS)], **(effort if i % 4 < 2 else {})}
        out.append((rows[start % len(rows): start % len(rows) + n], options))
        start += n
    wrong_effort = {"nprobe": 2} if "ef_search" in effort else {"ef_search": 8}
    out += [(random[:2], {"k": 0}), (random[:1], {"k": 3, "filter": {"colour": "red"}}),
            (random[:2, :5], {"k": 3}), (random[:1], {"k": 3, **wrong_effort}), (random[:1], {"k": 2, "kk": 1})]
    return out


def build(embedder, factory: str, tmp_path: Path, backend: str = "faiss") -> Retriever:
    return Retriever.build(embedder, "qa", corpus(), out_dir=tmp_path / "idx", factory=factory, backend=backend)


@pytest.mark.parametrize(("factory", "effort"), [
    ("Flat", {}), ("SQ8", {}), ("IVF4,Flat", {"nprobe": 2}), ("HNSW8", {"ef_search": 16}),
])
def test_many_requests_get_the_hits_each_gets_alone(tiny_embedder, tmp_path: Path, factory: str, effort: dict) -> None:
    retriever = build(tiny_embedder, factory, tmp_path)
    if factory != "HNSW8":  # HNSW has no delete
        assert retriever.delete([5, 6, 61]) == 3  # deleted documents (one of them a duplicate) are not hits
    requests = requests_for(tiny_embedder, effort)
    calls = count_searches(retriever)
    results = retriever.search_vectors_many(requests)
    merged = len(calls)
    for got, (vectors, options) in zip(results, requests, strict=True):
        assert_same(got, alone(retriever, vectors, options))
    assert sum(isinstance(r, Exception) for r in results) == 5
    assert any(r and r[0] == [] for r in results if not isinstance(r, Exception))  # a filter matching nothing
    assert any(len(row) < 100 and row for r in results[5::6] for row in r)  # k 100: fewer hits than k
    assert merged < 24, f"24 requests took {merged} index searches"


def test_milvus_requests_are_searched_each_alone(tiny_embedder, tmp_path: Path) -> None:
    """Milvus scores a query differently at float rounding with other queries beside it (a document and its duplicate
    came in either order), so its requests are not searched together."""
    retriever = build(tiny_embedder, "Flat", tmp_path, backend="milvus")
    try:
        retriever.delete([5, 61])
        requests = requests_for(tiny_embedder, {})
        calls = count_searches(retriever)
        results = retriever.search_vectors_many(requests)
        assert calls and max(calls) <= 3, calls  # no search of more than one request's rows
        calls.clear()
        for got, (vectors, options) in zip(results, requests, strict=True):
            assert_same(got, alone(retriever, vectors, options))
    finally:
        retriever.close()


@pytest.mark.parametrize(("factory", "nested"), [("Flat", True), ("SQ8", True), ("IVF4,Flat", True),
                                                 ("PCA16,IVF4,Flat", True), ("HNSW8", False)])
def test_one_index_search_per_filter_and_effort_or_per_k(tiny_embedder, factory: str, nested: bool) -> None:
    """Requests that differ only in k share one index search where the index's top k nest (every k, cut from the
    largest), else one per k; another filter is another search."""
    retriever = Retriever.build(tiny_embedder, "qa", corpus(duplicates=0), factory=factory)
    assert retriever.index.shared_search == ("any k" if nested else "same k")
    rows = np.random.default_rng(2).standard_normal((8, tiny_embedder.dim)).astype(np.float32)
    ks = [1, 4, 4, 9, 1, 30]
    requests = [(rows[i : i + 1], {"k": k}) for i, k in enumerate(ks)] + [(rows[6:8], {"k": 4, "filter": None})]
    requests.append((rows[:1], {"k": 4, "filter": {"lang": "en"}}))
    calls = count_searches(retriever)
    results = retriever.search_vectors_many(requests)
    assert calls == ([8, 1] if nested else [2, 4, 1, 1, 1])  # (k 1: 2 rows, k 4: 1 + 1 + 2, k 9, k 30), filtered
    for got, (vectors, options) in zip(results, requests, strict=True):
        assert_same(got, retriever.search_vectors(vectors, **options))


class HighIdTies:
    """A FAISS index whose top k keeps, of hits tied in score at the k-th place, those of the highest ids (the
    contract leaves that choice to the index: an IVF keeps the first its lists hold, and a delete reorders them)."""

    nested_top_k = True

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def search(self, vectors, k, filter=None, **effort):
        scores, ids = self.inner.search(vectors, k + 8, filter=filter, **effort)
        for row_scores, row_ids in zip(scores, ids, strict=True):
            last = row_scores[k - 1]
            tied = np.flatnonzero(row_scores == last)
            keep = tied[::-1][: k - int((row_scores > last).sum())]  # the tied hits of the highest ids
            order = np.concatenate([np.flatnonzero(row_scores > last), np.sort(keep)])
            row_scores[:k], row_ids[:k] = row_scores[order], row_ids[order]
            row_ids[k:], row_scores[k:] = -1, -np.inf
        return scores[:, :k], ids[:, :k]


def test_a_row_cut_between_tied_hits_is_searched_again_alone(tiny_embedder) -> None:
    """Of two documents of one text (equal scores), a search of k 1 keeps the one the index picks; cut from a search
    of k 3 it would be the lower id, so that request is searched again alone."""
    retriever = Retriever.build(tiny_embedder, "qa", corpus())
    retriever.index = HighIdTies(retriever.index)
    query = tiny_embedder.encode_keys([corpus()[0]["text"]], "qa")  # its own vector: documents 0 and 60 first
    other = np.random.default_rng(3).standard_normal((1, tiny_embedder.dim)).astype(np.float32)
    requests = [(query, {"k": 1}), (other, {"k": 3})]
    assert sorted(h.id for h in retriever.search_vectors(query, k=2)[0]) == [0, 60]  # documents 0 and 60 tie
    assert retriever.search_vectors(query, k=1)[0][0].id == 60  # the index's choice
    calls = count_searches(retriever)
    results = retriever.search_vectors_many(requests)
    assert calls == [2, 1]  # together, then the tied one alone
    for got, (vectors, options) in zip(results, requests, strict=True):
        assert_same(got, retriever.search_vectors(vectors, **options))


def test_rows_are_cut_before_ids_past_the_documents_are_left_out(tiny_embedder) -> None:
    """A vector whose document is not stored (an add not finished) is left out of a row after the row is cut to its
    k, as a search of that k alone leaves it out: k 2 then gives one hit, not the third of a search of k 5."""
    retriever = Retriever.build(tiny_embedder, "qa", corpus(duplicates=0))
    rows = np.random.default_rng(4).standard_normal((2, tiny_embedder.dim)).astype(np.float32)
    retriever.index.add([1000], rows[:1])  # the nearest to the first query, with no document
    requests = [(rows[:1], {"k": 2}), (rows[1:], {"k": 5})]
    calls = count_searches(retriever)
    results = retriever.search_vectors_many(requests)
    assert calls == [2]
    assert len(results[0][0]) == 1
    for got, (vectors, options) in zip(results, requests, strict=True):
        assert_same(got, retriever.search_vectors(vectors, **options))


def test_filters_merge_by_what_they_select(tiny_embedder) -> None:
    """Filters equal but for field order or a value given alone or in a list share a search; 1, True and 1.0 do
    not (equal in Python, not to every backend)."""
    retriever = Retriever.build(tiny_embedder, "qa", corpus(duplicates=0))
    rows = np.random.default_rng(5).standard_normal((6, tiny_embedder.dim)).astype(np.float32)
    filters = [{"lang": "en", "n": 1}, {"n": [1], "lang": ["en"]}, {"n": True, "lang": "en"}, {"n": 1.0, "lang": "en"}]
    requests = [(rows[i : i + 1], {"k": 3, "filter": f}) for i, f in enumerate(filters)]
    calls = count_searches(retriever)
    results = retriever.search_vectors_many(requests)
    assert calls == [2, 1, 1]
    for got, (vectors, options) in zip(results, requests, strict=True):
        assert_same(got, retriever.search_vectors(vectors, **options))
