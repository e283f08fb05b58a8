"""POST /v1/embeddings on the real server: the unchanged `openai` client and raw HTTP get Embedder.encode's vectors."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from openai import OpenAI

TEXTS = ["what is the capital of France?", "Paris is the capital of France.", "a third, longer text " * 5]


@pytest.fixture(scope="module")
def client(tiny_server) -> OpenAI:
    return OpenAI(base_url=f"{tiny_server.url}/v1", api_key=tiny_server.api_key, max_retries=0, timeout=60)


def vectors_of(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def test_openai_client_default_base64_equals_embedder(client, tiny_server, tiny_embedder) -> None:
    response = client.embeddings.create(input=TEXTS, model=tiny_server.model_id)  # the client asks for base64
    assert response.model == tiny_server.model_id
    assert response.object == "list"
    np.testing.assert_allclose(vectors_of(response), tiny_embedder.encode(TEXTS, "qa", "query"), atol=1e-5)
    expected_tokens = tiny_embedder.count_tokens(TEXTS, "qa", "query")  # instruction included
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected_tokens
    assert expected_tokens > tiny_embedder.count_tokens(TEXTS)


def test_openai_client_float_single_string(client, tiny_server, tiny_embedder) -> None:
    response = client.embeddings.create(input=TEXTS[0], model=tiny_server.model_id, encoding_format="float")
    assert len(response.data) == 1
    np.testing.assert_allclose(vectors_of(response), tiny_embedder.encode(TEXTS[:1], "qa", "query"), atol=1e-5)


def test_openai_client_task_and_role_via_extra_body(client, tiny_server, tiny_embedder) -> None:
    response = client.embeddings.create(
        input=TEXTS, model=tiny_server.model_id, extra_body={"task": "chat", "role": "key"}
    )
    got = vectors_of(response)
    np.testing.assert_allclose(got, tiny_embedder.encode(TEXTS, "chat", "key"), atol=1e-5)
    # the instruction really is applied: the qa query vectors differ
    assert np.abs(got - tiny_embedder.encode(TEXTS, "qa", "query")).max() > 1e-3


def test_dimensions_truncate_then_renormalise(client, tiny_server, tiny_embedder) -> None:
    response = client.embeddings.create(input=TEXTS, model=tiny_server.model_id, dimensions=8)
    got = vectors_of(response)
    full = tiny_embedder.encode(TEXTS, "qa", "query")[:, :8]
    np.testing.assert_allclose(got, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_raw_http_shapes_and_base64_little_endian(tiny_server, tiny_embedder) -> None:
    body = {"input": TEXTS[:2], "model": tiny_server.model_id, "role": "key", "task": "tool"}
    plain = httpx.post(f"{tiny_server.url}/v1/embeddings", json=body, headers=tiny_server.headers(), timeout=60)
    assert plain.status_code == 200, plain.text
    payload = plain.json()
    assert set(payload) == {"object", "data", "model", "usage"}
    assert payload["data"][0]["object"] == "embedding"
    assert payload["usage"]["prompt_tokens"] == tiny_embedder.count_tokens(TEXTS[:2], "tool", "key")
    expected = tiny_embedder.encode(TEXTS[:2], "tool", "key")
    np.testing.assert_allclose(np.array([d["embedding"] for d in payload["data"]]), expected, atol=1e-5)

    encoded = httpx.post(f"{tiny_server.url}/v1/embeddings", json={**body, "encoding_format": "base64"},
                         headers=tiny_server.headers(), timeout=60).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]])
    assert decoded.shape == (2, tiny_embedder.dim)
    np.testing.assert_allclose(decoded, expected, atol=1e-5)


def test_models_health_and_unknown_model(client, tiny_server, tiny_embedder) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [tiny_server.model_id]
    assert client.models.retrieve(tiny_server.model_id).id == tiny_server.model_id
    health = httpx.get(f"{tiny_server.url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["dim"] == tiny_embedder.dim and "qa" in health["tasks"]
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(input="x", model="text-embedding-3-small")
    assert tiny_server.model_id in str(info.value)


def test_openai_client_errors_are_typed(client, tiny_server) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(input="x", model=tiny_server.model_id, extra_body={"task": "nope"})
    assert info.value.body["param"] == "task"
    assert "known tasks: qa" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(input=[[1, 2, 3]], model=tiny_server.model_id)
    assert "token-id arrays are not supported" in info.value.body["message"]
    bad_key = OpenAI(base_url=f"{tiny_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.embeddings.create(input="x", model=tiny_server.model_id)
