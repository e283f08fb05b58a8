"""Concurrent clients on the real server get merged into model batches, and each still gets its own vectors."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

CLIENTS = 16


def batches_over_one(server, text: str) -> float:
    """Model batches that merged more than one request, from the batch-size histogram."""
    total = server.metric(text, "llm_embedder_batch_requests_count")
    return total - server.metric(text, "llm_embedder_batch_requests_bucket", le="1.0")


async def fire(server, texts: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers(), timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(CLIENTS)))  # open the connections first
        bodies = [{"input": text, "model": server.model_id, "task": "qa" if i % 2 else "chat"}
                  for i, text in enumerate(texts)]
        return await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in bodies))


def test_sixteen_concurrent_clients_are_batched(tiny_server, tiny_embedder) -> None:
    texts = [f"concurrent request number {i} " + "word " * i for i in range(CLIENTS)]
    before = tiny_server.metrics()
    responses = asyncio.run(fire(tiny_server, texts))
    assert [r.status_code for r in responses] == [200] * CLIENTS
    for i, (text, response) in enumerate(zip(texts, responses, strict=True)):
        expected = tiny_embedder.encode([text], "qa" if i % 2 else "chat", "query")
        np.testing.assert_allclose(np.array([response.json()["data"][0]["embedding"]]), expected, atol=1e-5)
    after = tiny_server.metrics()
    merged = batches_over_one(tiny_server, after) - batches_over_one(tiny_server, before)
    assert merged >= 1, "no model batch merged two requests"
    name = "llm_embedder_embedded_texts_total"
    served = tiny_server.metric(after, name) - tiny_server.metric(before, name)
    assert served == CLIENTS
