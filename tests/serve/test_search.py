"""POST /v1/search and /v1/augment on the real server over a saved index: same hits as the Retriever in process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

DOCS = [
    {"text": "Paris is the capital and largest city of France.", "lang": "en"},
    {"text": "Berlin is the capital of Germany.", "lang": "en"},
    {"text": "Madrid es la capital de España.", "lang": "es"},
    {"text": "The Eiffel Tower is a wrought-iron lattice tower in Paris.", "lang": "en"},
    {"text": "Photosynthesis converts light energy into chemical energy.", "lang": "en"},
    {"text": "Roma è la capitale d'Italia.", "lang": "it"},
]


@pytest.fixture(scope="module")
def index_dir(tiny_embedder, tmp_path_factory):
    from llm_embedder.retriever import Retriever

    out = tmp_path_factory.mktemp("serve_index") / "docs"
    Retriever.build(tiny_embedder, "qa", DOCS, out_dir=out)
    return out


@pytest.fixture(scope="module")
def search_server(start_server, tiny_embedder_dir, index_dir, tmp_path_factory) -> Iterator:
    log_path = tmp_path_factory.mktemp("serve_search") / "server.log"
    with start_server(tiny_embedder_dir, log_path, "--index", f"docs={index_dir}", "--max-k", "50",
                      api_key=None) as server:
        yield server


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_health_lists_the_index(search_server) -> None:
    assert httpx.get(f"{search_server.url}/health", timeout=30).json()["indexes"] == {"docs": "qa"}


def test_search_matches_the_retriever(search_server, tiny_embedder, index_dir) -> None:
    from llm_embedder.retriever import Retriever

    queries = ["capital of France", "how do plants make energy"]
    response = post(search_server, "/v1/search", {"index": "docs", "query": queries, "k": 3})
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["index"] == "docs" and payload["task"] == "qa" and len(payload["data"]) == 2
    expected = Retriever.load(index_dir, embedder=tiny_embedder).search(queries, k=3)
    for result, hits, query in zip(payload["data"], expected, queries, strict=True):
        assert result["query"] == query
        assert [h["id"] for h in result["hits"]] == [h.id for h in hits]
        assert [h["text"] for h in result["hits"]] == [h.text for h in hits]
        assert [h["score"] for h in result["hits"]] == pytest.approx([h.score for h in hits], abs=1e-5)
        assert all(set(h) == {"id", "score", "text", "metadata"} for h in result["hits"])


def test_search_single_query_and_filter(search_server) -> None:
    payload = post(search_server, "/v1/search", {"index": "docs", "query": "capital", "k": 10,
                                                 "filter": {"lang": "en"}}).json()
    hits = payload["data"][0]["hits"]
    assert len(hits) == 4
    assert all(h["metadata"]["lang"] == "en" for h in hits)
    by_task = post(search_server, "/v1/search", {"task": "qa", "query": "capital", "k": 10,
                                                 "filter": {"lang": "en"}}).json()
    assert by_task["index"] == "docs" and by_task["data"] == payload["data"]


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"index": "nope", "query": "x"}, 404, "index"),
    ({"index": "docs", "query": "x", "k": 51}, 400, "k"),
    ({"index": "docs", "query": "x", "k": 0}, 400, "k"),
    ({"index": "docs", "query": "x", "k": "2"}, 400, "k"),
    ({"index": "docs", "query": "x", "k": True}, 400, "k"),
    ({"index": "docs", "query": ["x", "  "]}, 400, "query[1]"),
    ({"index": "docs", "task": "chat", "query": "x"}, 400, "task"),
    ({"index": "docs", "query": []}, 400, "query"),
    ({"index": "docs", "query": "x", "filter": {"bad field": 1}}, 400, "filter"),
    ({"index": "docs", "query": "x", "extra": 1}, 400, "extra"),
    ({"query": "x"}, 400, "index"),
    ({"task": "chat", "query": "x"}, 404, "task"),
    ({"task": "nope", "query": "x"}, 400, "task"),
])
def test_bad_search_requests(search_server, body, status, param) -> None:
    response = post(search_server, "/v1/search", body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert post(search_server, "/v1/search", {"index": "docs", "query": "still up"}).status_code == 200


def test_augment_builds_the_prompt_from_the_hits(search_server, tiny_embedder, index_dir) -> None:
    from llm_embedder.augment import augment
    from llm_embedder.retriever import Retriever

    query = "What is the capital of France?"
    for body in ({"index": "docs", "query": query, "k": 2, "budget_tokens": 512},
                 {"task": "qa", "query": query, "k": 2, "budget_tokens": 512}):
        response = post(search_server, "/v1/augment", body)
        assert response.status_code == 200, response.text
        payload = response.json()
        hits = Retriever.load(index_dir, embedder=tiny_embedder).search(query, k=2)[0]
        assert [h["id"] for h in payload["hits"]] == [h.id for h in hits]
        assert payload["prompt"] == augment("qa", query, [h.text for h in hits], budget_tokens=512)
        assert query in payload["prompt"] and payload["task"] == "qa" and payload["index"] == "docs"
        assert payload["dropped"] == 0
    # a budget for the query and one hit: the prompt holds the best hit, and only it is listed
    one = augment("qa", query, [hits[0].text], budget_tokens=512)
    from llm_embedder.augment.prompt import token_counter

    budget = token_counter(None)(one)
    payload = post(search_server, "/v1/augment", {"index": "docs", "query": query, "k": 2,
                                                  "budget_tokens": budget}).json()
    assert payload["prompt"] == one and [h["id"] for h in payload["hits"]] == [hits[0].id]
    assert payload["dropped"] == 1


def test_bad_augment_requests(search_server) -> None:
    no_index = post(search_server, "/v1/augment", {"task": "chat", "query": "x"})
    assert no_index.status_code == 404 and no_index.json()["error"]["param"] == "task"
    unknown = post(search_server, "/v1/augment", {"task": "nope", "query": "x"})
    assert unknown.status_code == 400 and "known tasks" in unknown.json()["error"]["message"]
    over = post(search_server, "/v1/augment", {"index": "docs", "query": "word " * 500, "budget_tokens": 5})
    assert over.status_code == 400 and over.json()["error"]["param"] == "budget_tokens"
    blank = post(search_server, "/v1/augment", {"index": "docs", "query": "   "})
    assert blank.status_code == 400 and blank.json()["error"]["param"] == "query"
    other_task = post(search_server, "/v1/augment", {"index": "docs", "task": "chat", "query": "x"})
    assert other_task.status_code == 400 and "built for task 'qa', not 'chat'" in other_task.json()["error"]["message"]
    assert post(search_server, "/v1/augment", {"index": "docs", "query": "ok"}).status_code == 200


def test_server_at_the_index_document_length(start_server, tiny_embedder_dir, tmp_path) -> None:
    """`serve --max-length 16` with an index built at 16: it starts, and its key vectors are the index's."""
    import numpy as np

    from llm_embedder.embedder import Embedder
    from llm_embedder.retriever import Retriever

    short = Embedder(tiny_embedder_dir, device="cpu", query_max_length=16, key_max_length=16)
    long_doc = "A document far longer than sixteen tokens, " + " ".join(f"word{i}" for i in range(60))
    Retriever.build(short, "qa", [*DOCS, {"text": long_doc}], out_dir=tmp_path / "idx")
    with start_server(tiny_embedder_dir, tmp_path / "server.log", "--index", f"docs={tmp_path / 'idx'}",
                      "--max-length", "16", api_key=None) as server:
        body = {"input": [long_doc], "model": server.model_id, "task": "qa", "role": "key"}
        got = httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=60).json()["data"][0]["embedding"]
        stored = np.fromfile(tmp_path / "idx" / "embeddings.memmap", dtype=np.float32).reshape(len(DOCS) + 1, -1)
        np.testing.assert_allclose(got, stored[-1], atol=1e-5)
        response = post(server, "/v1/search", {"index": "docs", "query": long_doc, "k": 3})
        assert response.status_code == 200, response.text
        expected = Retriever.load(tmp_path / "idx", short).search(long_doc, k=3)[0]
        assert [h["id"] for h in response.json()["data"][0]["hits"]] == [h.id for h in expected]


@pytest.fixture(scope="module")
def chat_index_dir(tiny_embedder, tmp_path_factory):
    from llm_embedder.retriever import Retriever

    out = tmp_path_factory.mktemp("serve_chat_index") / "turns"
    Retriever.build(tiny_embedder, "chat", DOCS, out_dir=out)
    return out


@pytest.fixture(scope="module")
def batching_server(start_server, tiny_embedder_dir, index_dir, chat_index_dir, tmp_path_factory) -> Iterator:
    """Two indexes of different tasks (qa, chat) and a 200 ms batching window (merges on a loaded box)."""
    log_path = tmp_path_factory.mktemp("serve_batching") / "server.log"
    with start_server(tiny_embedder_dir, log_path, "--index", f"docs={index_dir}", "--index",
                      f"turns={chat_index_dir}", "--max-wait-ms", "200", api_key=None) as server:
        yield server


SEARCH_QUERIES = ["capital of France", "how do plants make energy", "a tower in Paris", "Italy", "Spain's capital",
                  "German city"]


def concurrent_bodies(clients: int) -> list[tuple[str, dict]]:
    """Search requests of both indexes (some of two queries, some filtered, k from 1 to 4) and two augments."""
    bodies: list[tuple[str, dict]] = []
    for i in range(clients):
        query: str | list[str] = SEARCH_QUERIES[i % len(SEARCH_QUERIES)]
        if i % 3 == 0:
            query = [query, SEARCH_QUERIES[(i + 1) % len(SEARCH_QUERIES)]]
        body = {"index": "docs" if i % 2 else "turns", "query": query, "k": 1 + i % 4}
        if i % 4 == 1:
            body["filter"] = {"lang": "en"}
        bodies.append(("/v1/search", body))
    bodies += [("/v1/augment", {"index": "docs", "query": "What is the capital of France?", "k": 2}),
               ("/v1/augment", {"task": "chat", "query": "Tell me about Rome", "k": 2})]
    return bodies


async def post_all(server, bodies: list[tuple[str, dict]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in bodies))  # open the connections first
        return await asyncio.gather(*(client.post(path, json=body) for path, body in bodies))


def test_concurrent_searches_share_model_batches(batching_server, tiny_embedder, index_dir, chat_index_dir) -> None:
    """Concurrent /v1/search and /v1/augment requests are encoded in fewer model batches than requests (both tasks
    among them, each with its own instruction), and every request gets the hits the Retriever gives it alone."""
    from llm_embedder.retriever import Retriever

    server = batching_server
    bodies = concurrent_bodies(16)
    before = server.metrics()
    responses = asyncio.run(post_all(server, bodies))
    after = server.metrics()
    assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]

    retrievers = {name: Retriever.load(path, embedder=tiny_embedder)
                  for name, path in (("docs", index_dir), ("turns", chat_index_dir))}
    queries = 0
    for (path, body), response in zip(bodies, responses, strict=True):
        name = body.get("index") or "turns"
        texts = body["query"] if isinstance(body["query"], list) else [body["query"]]
        queries += len(texts)
        expected = retrievers[name].search(texts, k=body["k"], filter=body.get("filter"))  # alone, unbatched
        got = ([[h for h in result["hits"]] for result in response.json()["data"]] if path == "/v1/search"
               else [response.json()["hits"]])
        for hits, want in zip(got, expected, strict=True):
            if path == "/v1/search":
                assert [h["id"] for h in hits] == [h.id for h in want]
            else:  # the prompt keeps the hits that fit its budget, best first
                assert [h["id"] for h in hits] == [h.id for h in want][: len(hits)]
            assert [h["score"] for h in hits] == pytest.approx([h.score for h in want][: len(hits)], abs=1e-5)

    def delta(name: str, **labels: str) -> float:
        return server.metric(after, name, **labels) - server.metric(before, name, **labels)

    assert delta("llm_embedder_embedded_texts_total") == queries  # every query went through the batcher
    assert delta("llm_embedder_batch_requests_sum") == len(bodies)
    batches = delta("llm_embedder_batch_requests_count")
    assert 1 <= batches < len(bodies), f"{len(bodies)} requests took {batches} model batches"
    merged = batches - delta("llm_embedder_batch_requests_bucket", le="1.0")
    assert merged >= 1, "no model batch merged two search requests"

