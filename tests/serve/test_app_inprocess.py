"""create_app in process with a fake embedder: no-key mode, a model that fails (500, server keeps serving)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from llm_embedder.serve import ServeSettings, create_app


class FakeEmbedder:
    dim = 4

    def __init__(self) -> None:
        self.fail = False

    def count_tokens(self, texts: list[str], task: str | None = None, role: str = "query") -> int:
        return sum(len(t.split()) + 2 for t in texts)

    def encode(self, texts: list[str], task: str, role: str, show_progress: bool | None = None) -> np.ndarray:
        assert show_progress is False  # a server's log gets no progress bars
        if self.fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        vectors = np.array([[len(t), 1.0, 2.0, 3.0] for t in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_without_key_and_model_failure() -> None:
    embedder = FakeEmbedder()
    app = create_app(embedder, {}, ServeSettings(model_id="fake", max_wait_ms=1))
    with TestClient(app, raise_server_exceptions=False) as client:
        ok = client.post("/v1/embeddings", json={"input": ["a b", "c"], "model": "fake"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
        assert np.allclose(np.linalg.norm([d["embedding"] for d in ok.json()["data"]], axis=1), 1.0)
        embedder.fail = True
        failed = client.post("/v1/embeddings", json={"input": "x", "model": "fake"})
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        assert "out of memory" in failed.json()["error"]["message"]
        embedder.fail = False
        assert client.post("/v1/embeddings", json={"input": "x", "model": "fake"}).status_code == 200
        metrics = client.get("/metrics").text
        assert 'llm_embedder_requests_total{route="/v1/embeddings",status="500"} 1.0' in metrics
        assert client.get("/openapi.json").json()["paths"]["/v1/embeddings"]["post"]["responses"]["413"]


def test_requests_refused_before_routing_are_counted_under_their_route() -> None:
    app = create_app(FakeEmbedder(), {}, ServeSettings(model_id="fake", api_key="sekret", max_body_bytes=1000))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models/fake").status_code == 401
        big = client.post("/v1/embeddings", content=b"x" * 2000, headers={"Authorization": "Bearer sekret"})
        assert big.status_code == 413
        assert client.get("/v1/nowhere").status_code == 401
        metrics = client.get("/metrics").text
    for route, status in (("/v1/models", 401), ("/v1/models/{model_id:path}", 401), ("/v1/embeddings", 413),
                          ("other", 401)):
        assert f'llm_embedder_requests_total{{route="{route}",status="{status}"}} 1.0' in metrics, metrics


def test_the_body_limit_fits_inputs_at_their_limit_escaped_as_json() -> None:
    import json

    settings = ServeSettings(max_inputs=2, max_chars=16384)
    for char in ("a", "\u00e9", "\U0001f600"):  # the last: two ASCII escapes of 6 bytes each
        body = json.dumps({"model": "m", "input": [char * 16384] * 2, "task": "qa", "role": "key"})
        assert len(body.encode()) <= settings.body_limit(), char


def test_an_error_quoting_a_lone_surrogate_is_still_answered() -> None:
    from llm_embedder.serve.errors import ApiError, error_response

    response = error_response(ApiError(400, "filter on '\ud800', which the index does not store", param="\ud800"))
    assert response.status_code == 400 and b"\\\\ud800" in response.body


class CountingEmbedder:
    """A real embedder that records every ``encode`` call made through it: the server's model calls."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], str, str]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def encode(self, texts: list[str], task: str, role: str, **kwargs: object) -> np.ndarray:
        self.calls.append((list(texts), task, role))
        return self.inner.encode(texts, task, role, **kwargs)


def test_concurrent_searches_are_encoded_together_and_other_embedders_alone(tiny_embedder) -> None:
    """Searches of an index on the server's embedder share model calls; an index built with another embedder
    object (create_app from Python) still encodes its own queries, with its own model."""
    from concurrent.futures import ThreadPoolExecutor

    from llm_embedder.retriever import Retriever

    docs = ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Plants turn light into sugar.",
            "Rome is in Italy."]
    counting = CountingEmbedder(tiny_embedder)
    shared = Retriever.build(counting, "qa", docs)
    own = Retriever.build(tiny_embedder, "chat", docs)
    app = create_app(counting, {"docs": shared, "own": own}, ServeSettings(model_id="tiny", max_wait_ms=200))
    queries = [f"question {i} about capitals" + " and more" * i for i in range(8)]
    bodies = [{"index": "docs", "query": q, "k": 2} for q in queries] + [{"index": "own", "query": "Rome", "k": 2}]
    with TestClient(app) as client, ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post("/v1/search", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
    for body, response in zip(bodies, responses, strict=True):
        want = (shared if body["index"] == "docs" else own).search(body["query"], k=2)[0]  # alone, unbatched
        hits = response.json()["data"][0]["hits"]
        assert [h["id"] for h in hits] == [h.id for h in want]
        assert [h["score"] for h in hits] == pytest.approx([h.score for h in want], abs=1e-5)
    assert all(task == "qa" and role == "query" for _, task, role in counting.calls)
    assert sorted(text for texts, _, _ in counting.calls for text in texts) == sorted(queries)  # chat's not here
    assert 1 <= len(counting.calls) < len(queries), f"{len(queries)} searches took {len(counting.calls)} model calls"


def test_concurrent_searches_share_index_searches(tiny_embedder) -> None:
    """Concurrent /v1/search and /v1/augment requests of one index encoded in one model batch are searched together
    (one index search per filter, each request cut to its own k), and each gets the hits it gets alone; a request
    with a filter on a field no document has still gets its own 400."""
    from concurrent.futures import ThreadPoolExecutor

    from llm_embedder.retriever import Retriever

    docs = [{"text": f"Document {i} about {topic}.", "lang": "en" if i % 2 else "fr"}
            for i, topic in enumerate(["Paris", "Berlin", "rivers", "Rome", "music", "the sea", "bread", "stars"])]
    retriever = Retriever.build(tiny_embedder, "qa", docs)
    searches: list[int] = []
    search = retriever.index.search
    retriever.index.search = lambda vectors, *a, **kw: (searches.append(len(vectors)), search(vectors, *a, **kw))[1]
    app = create_app(tiny_embedder, {"docs": retriever}, ServeSettings(model_id="tiny", max_wait_ms=300))
    bodies = [("/v1/search", {"index": "docs", "query": [f"query {i}"] * (1 + i % 2), "k": 1 + i % 4,
                              **({"filter": {"lang": "en"}} if i % 3 == 0 else {})}) for i in range(9)]
    bodies += [("/v1/augment", {"index": "docs", "query": "about rivers", "k": 2}),
               ("/v1/search", {"index": "docs", "query": "x", "k": 2, "filter": {"colour": "red"}})]
    with TestClient(app) as client, ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: client.post(body[0], json=body[1]), bodies))
    assert [r.status_code for r in responses] == [200] * (len(bodies) - 1) + [400], [r.text for r in responses]
    assert responses[-1].json()["error"]["param"] == "filter"
    assert len(searches) < len(bodies) - 1, f"{len(bodies) - 1} requests took {len(searches)} index searches"
    assert max(searches) > 2  # a search of more than one request's rows
    for (path, body), response in zip(bodies[:-1], responses[:-1], strict=True):
        want = retriever.search(body["query"], k=body["k"], filter=body.get("filter"))  # alone, unbatched
        got = [r["hits"] for r in response.json()["data"]] if path == "/v1/search" else [response.json()["hits"]]
        for hits, want_hits in zip(got, want, strict=True):
            assert [h["id"] for h in hits] == [h.id for h in want_hits][: len(hits) if path == "/v1/augment" else None]
            assert [h["score"] for h in hits] == pytest.approx([h.score for h in want_hits][: len(hits)], abs=1e-5)


def test_a_document_field_holding_nan_is_answered_as_null_not_a_500(tiny_embedder) -> None:
    """An index built before NaN was refused can hold it in a document's fields; a search whose hits included that
    document failed with 500 "Out of range float values are not JSON compliant"."""
    from llm_embedder.retriever import Retriever

    docs = [{"text": "Paris is the capital of France.", "n": float("nan")}, {"text": "Rome is in Italy.", "n": 1.5}]
    app = create_app(tiny_embedder, {"docs": Retriever.build(tiny_embedder, "qa", docs)}, ServeSettings(model_id="t"))
    with TestClient(app) as client:
        for path, body in (("/v1/search", {"index": "docs", "query": "capital", "k": 2}),
                           ("/v1/augment", {"index": "docs", "query": "capital", "k": 2})):
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            hits = response.json()["data"][0]["hits"] if path == "/v1/search" else response.json()["hits"]
            assert sorted((h["metadata"].get("n") is None) for h in hits) == [False, True]


class NanEmbedder(CountingEmbedder):
    """A real embedder whose query vectors turn NaN while ``nan`` is set: a model gone wrong (a server fault)."""

    nan = False

    def encode(self, texts: list[str], task: str, role: str, **kwargs: object) -> np.ndarray:
        vectors = super().encode(texts, task, role, **kwargs)
        return np.full_like(vectors, np.nan) if self.nan and role == "query" else vectors

    def encode_queries(self, texts: list[str], task: str = "qa", **kwargs: object) -> np.ndarray:
        return self.encode(texts, task, "query", **kwargs)


def search_error(client: TestClient, path: str, body: dict) -> tuple[int, dict]:
    response = client.post(path, json=body)
    return response.status_code, response.json().get("error", {})


DOCS = [{"text": f"Document {i} about capitals.", "lang": "en" if i % 2 else "fr"} for i in range(6)]
ROUTES = ("/v1/search", "/v1/augment")


def test_nan_query_vectors_from_the_model_are_a_500_not_a_filter_fault(tiny_embedder) -> None:
    """A model returning NaN query vectors was answered 400 "search failed: query vectors contain NaN", labelled
    param "filter" when a filter was sent: a server fault, answered 500 whatever the request held."""
    from llm_embedder.retriever import Retriever

    model = NanEmbedder(tiny_embedder)
    batched = Retriever.build(model, "qa", DOCS)  # the server's embedder: its queries go through the batcher
    alone = Retriever.build(NanEmbedder(tiny_embedder), "qa", DOCS)  # another one: encodes its own queries
    alone.embedder.nan = model.nan = True
    app = create_app(model, {"docs": batched, "alone": alone}, ServeSettings(model_id="t", max_wait_ms=1))
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ROUTES:
            for name in ("docs", "alone"):
                for extra in ({}, {"filter": {"lang": "en"}}):
                    status, error = search_error(client, path, {"index": name, "query": "capital", "k": 2, **extra})
                    assert status == 500, (path, name, extra, error)
                    assert error["param"] is None and error["type"] == "server_error", error
                    assert "NaN" in error["message"]
        model.nan = alone.embedder.nan = False
        assert client.post("/v1/search", json={"index": "docs", "query": "capital"}).status_code == 200


def test_search_errors_name_the_right_param(tiny_embedder, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Milvus server's refusal of k above its cap and an empty index were labelled param "filter" whenever a
    filter was sent: k names k, an empty index names no param, a filter fault still names the filter."""
    from llm_embedder.index import milvus_index
    from llm_embedder.retriever import Retriever

    capped = Retriever.build(tiny_embedder, "qa", DOCS, tmp_path / "capped", backend="milvus")
    monkeypatch.setattr(milvus_index, "MAX_LIMIT", 2)  # the server's cap (16384), made small enough to reach
    monkeypatch.setattr(milvus_index, "is_lite", lambda uri: False)  # Milvus Lite searched as a server would be
    emptied = Retriever.build(tiny_embedder, "qa", DOCS)
    emptied.delete(range(len(DOCS)))
    app = create_app(tiny_embedder, {"capped": capped, "emptied": emptied}, ServeSettings(model_id="t"))
    with TestClient(app) as client:
        for path in ROUTES:
            for extra in ({}, {"filter": {"lang": "en"}}):
                status, error = search_error(client, path, {"index": "capped", "query": "capital", "k": 3, **extra})
                assert (status, error["param"]) == (400, "k"), error
                assert "a Milvus server returns at most 2 hits per query" in error["message"]
                status, error = search_error(client, path, {"index": "emptied", "query": "capital", **extra})
                assert (status, error["param"], error["code"]) == (400, None, "empty_index"), error
                assert "the index is empty" in error["message"]
            status, error = search_error(client, path, {"index": "capped", "query": "capital",
                                                        "filter": {"topic": "x"}})
            assert (status, error["param"]) == (400, "filter"), error
            status, error = search_error(client, path, {"index": "capped", "query": "capital", "filter": {"lang": []}})
            assert (status, error["param"]) == (400, "filter") and "given no value" in error["message"], error
        ok = client.post("/v1/search", json={"index": "capped", "query": "capital", "k": 2, "filter": {"lang": "en"}})
        assert ok.status_code == 200 and len(ok.json()["data"][0]["hits"]) == 2
    monkeypatch.undo()  # closed as the Milvus Lite database it is
    capped.index.close()


def test_a_milvus_server_gone_answers_503_and_the_server_keeps_serving(tiny_embedder, milvus_server) -> None:
    """A search of an index on a Milvus server that stopped answering was a 400 ("Milvus (uri): Fail connecting
    ...", as if the request were at fault): the backend is down, 503 index_unavailable, and the other indexes and
    routes still answer."""
    from llm_embedder.index import open_index
    from llm_embedder.retriever import Retriever

    uri, process = milvus_server
    on_server = Retriever.build(tiny_embedder, "qa", DOCS)
    on_server.index = open_index(uri, tiny_embedder.dim)  # the same documents, their vectors on the server
    on_server.index.add(range(len(DOCS)), tiny_embedder.encode_keys([d["text"] for d in DOCS], "qa"),
                        [{"lang": d["lang"]} for d in DOCS])
    local = Retriever.build(tiny_embedder, "qa", DOCS)
    app = create_app(tiny_embedder, {"remote": on_server, "local": local}, ServeSettings(model_id="t", max_wait_ms=1))
    with TestClient(app, raise_server_exceptions=False) as client:
        hits = client.post("/v1/search", json={"index": "remote", "query": "capital", "k": 2})
        assert hits.status_code == 200 and len(hits.json()["data"][0]["hits"]) == 2, hits.text
        process.kill()
        process.wait()
        for path in ROUTES:
            for extra in ({}, {"filter": {"lang": "en"}}):
                status, error = search_error(client, path, {"index": "remote", "query": "capital", "k": 2, **extra})
                assert (status, error["code"], error["param"]) == (503, "index_unavailable", None), error
                assert "unavailable" in error["message"] and uri in error["message"]
        assert client.post("/v1/search", json={"index": "local", "query": "capital"}).status_code == 200
