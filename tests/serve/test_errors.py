"""Bad requests on the real server: the right status, OpenAI's error shape naming the field, and the server
keeps answering afterwards. Also the API key, the limits (413), unknown routes and /metrics counters."""

from __future__ import annotations

import httpx
import pytest

CASES = [
    # (name, raw body, status, param, words in the message)
    ("malformed json", b'{"input": "x",', 400, None, "not valid JSON"),
    ("not utf-8", b'{"input": "caf\xe9", "model": "M"}', 400, None, "not valid UTF-8 (JSON must be): byte 0xe9 at"),
    ("not an object", b"[1, 2]", 400, None, "JSON object"),
    ("empty body", b"", 400, None, "JSON body"),
    ("missing input", b'{"model": "M"}', 400, "input", "missing required field"),
    ("missing model", b'{"input": "x"}', 400, "model", "missing required field"),
    ("input wrong type", b'{"input": 5, "model": "M"}', 400, "input", "string or a list of strings"),
    ("input item wrong type", b'{"input": ["a", 3], "model": "M"}', 400, "input[1]", "input[1] must be a string"),
    ("token ids", b'{"input": [1, 2, 3], "model": "M"}', 400, "input", "token-id arrays"),
    ("empty list", b'{"input": [], "model": "M"}', 400, "input", "empty list"),
    ("empty string", b'{"input": "", "model": "M"}', 400, "input", "empty string"),
    # a blank text was embedded as the instruction alone (the library now refuses it: a 500 without this check)
    ("blank string", b'{"input": " ", "model": "M"}', 400, "input", "input is blank; give the text to embed"),
    ("blank item", b'{"input": ["ok", "\\n\\t"], "model": "M"}', 400, "input[1]", "input[1] is blank"),
    ("invisible item", b'{"input": ["ok", "\\u200b"], "model": "M"}', 400, "input[1]", "input[1] is blank"),
    ("lone surrogate", b'{"input": "a\\ud800b", "model": "M"}', 400, "input", "not valid Unicode"),
    ("lone surrogate item", b'{"input": ["ok", "\\udfff"], "model": "M"}', 400, "input[1]", "input[1] is not valid"),
    ("bad role", b'{"input": "x", "model": "M", "role": "doc"}', 400, "role", "'query' or 'key'"),
    ("unknown task", b'{"input": "x", "model": "M", "task": "nope"}', 400, "task", "known tasks: qa"),
    ("bad format", b'{"input": "x", "model": "M", "encoding_format": "int8"}', 400, "encoding_format", "float"),
    ("dimensions type", b'{"input": "x", "model": "M", "dimensions": "a"}', 400, "dimensions", "integer"),
    ("dimensions bool", b'{"input": "x", "model": "M", "dimensions": true}', 400, "dimensions", "integer"),
    ("dimensions numeric string", b'{"input": "x", "model": "M", "dimensions": "12"}', 400, "dimensions", "integer"),
    ("dimensions zero", b'{"input": "x", "model": "M", "dimensions": 0}', 400, "dimensions", "greater than"),
    ("dimensions too big", b'{"input": "x", "model": "M", "dimensions": 100000}', 400, "dimensions", "between 1"),
    ("unknown model", b'{"input": "x", "model": "gpt-4"}', 404, "model", "not found"),
    ("too many inputs", b'{"input": ["a","b","c","d","e","f","g","h","i"], "model": "M"}', 413, "input",
     "9 items, over the limit of 8"),
    ("too long", b'{"input": ["ok", "' + b"x" * 201 + b'"], "model": "M"}', 413, "input[1]",
     "201 characters, over the limit of 200"),
]


def post(server, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", **server.headers(), **(headers or {})}
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=60)


def assert_still_serving(server) -> None:
    ok = post(server, "/v1/embeddings", f'{{"input": "still here", "model": "{server.model_id}"}}'.encode())
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["data"]) == 1


@pytest.mark.parametrize(("name", "body", "status", "param", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_embedding_request(tiny_server, name, body, status, param, words) -> None:
    response = post(tiny_server, "/v1/embeddings", body.replace(b'"M"', f'"{tiny_server.model_id}"'.encode()))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert words in error["message"]
    assert_still_serving(tiny_server)


def test_api_key_required_and_compared(tiny_server) -> None:
    body = f'{{"input": "x", "model": "{tiny_server.model_id}"}}'.encode()
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
                    {"Authorization": f"Bearer {tiny_server.api_key}x"}):
        response = post(tiny_server, "/v1/embeddings", body, headers)
        assert response.status_code == 401, headers
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"
    # checked before the body is read: a malformed body without a key is still 401
    assert post(tiny_server, "/v1/embeddings", b"{", {"Authorization": ""}).status_code == 401
    no_key = httpx.get(f"{tiny_server.url}/v1/models", timeout=30)
    assert no_key.status_code == 401
    assert httpx.get(f"{tiny_server.url}/health", timeout=30).status_code == 200  # liveness stays open
    assert_still_serving(tiny_server)


def test_oversized_body_is_413_before_parsing(tiny_server) -> None:
    huge = b'{"input": "' + b"y" * 200_000 + b'", "model": "M"}'
    response = post(tiny_server, "/v1/embeddings", huge)
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]["message"]
    assert_still_serving(tiny_server)


def test_chunked_body_is_capped_too(tiny_server) -> None:
    """A body sent without Content-Length (chunked) is refused once it passes the limit, and passed on below it."""
    headers = {"Content-Type": "application/json", **tiny_server.headers()}

    def chunks(body: bytes, size: int = 8192):
        yield from (body[i : i + size] for i in range(0, len(body), size))

    huge = f'{{"input": "{"y" * 200_000}", "model": "{tiny_server.model_id}"}}'.encode()
    response = httpx.post(f"{tiny_server.url}/v1/embeddings", content=chunks(huge), headers=headers, timeout=60)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413, response.text
    assert "request body is over the limit" in response.json()["error"]["message"]  # not parsed
    small = f'{{"input": ["one", "two"], "model": "{tiny_server.model_id}"}}'.encode()
    response = httpx.post(f"{tiny_server.url}/v1/embeddings", content=chunks(small, 7), headers=headers, timeout=60)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    assert_still_serving(tiny_server)


def test_unknown_route_and_method_use_the_error_shape(tiny_server) -> None:
    missing = httpx.get(f"{tiny_server.url}/v1/nothing", headers=tiny_server.headers(), timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = httpx.get(f"{tiny_server.url}/v1/embeddings", headers=tiny_server.headers(), timeout=30)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    assert_still_serving(tiny_server)


def test_metrics_count_requests_by_route_and_status(tiny_server) -> None:
    count = tiny_server.metric
    before = tiny_server.metrics()
    ok_before = count(before, "llm_embedder_requests_total", route="/v1/embeddings", status="200")
    bad_before = count(before, "llm_embedder_requests_total", route="/v1/embeddings", status="400")
    assert_still_serving(tiny_server)
    assert post(tiny_server, "/v1/embeddings", b"{").status_code == 400
    after = tiny_server.metrics()
    assert count(after, "llm_embedder_requests_total", route="/v1/embeddings", status="200") == ok_before + 1
    assert count(after, "llm_embedder_requests_total", route="/v1/embeddings", status="400") == bad_before + 1
    assert count(after, "llm_embedder_request_latency_seconds_count", route="/v1/embeddings") >= ok_before + 2
    assert count(after, "llm_embedder_batch_requests_count") >= 1
    assert count(after, "llm_embedder_embedded_texts_total") >= 1
