"""create_app in process with a fake embedder: no-key mode, a model that fails (500, server keeps serving)."""

from __future__ import annotations

import numpy as np
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
