"""The ASGI layer in front of every route: API key, body-size limit, and request metrics.

Written as plain ASGI (not BaseHTTPMiddleware) because it runs on every request of a latency-sensitive server.
The key is checked before the body is read, so an unauthenticated client gets 401 whatever it sends.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_embedder.serve.errors import ApiError, error_response
from llm_embedder.serve.metrics import ServeMetrics
from llm_embedder.serve.security import key_matches

PROTECTED_PREFIX = "/v1/"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class GuardMiddleware:
    """Reject bad keys (401) and oversized bodies (413); time and count every request by route."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, metrics: ServeMetrics,
        known_paths: set[str],
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.known_paths = known_paths

    def _reject(self, scope: Scope) -> ApiError | None:
        if scope["path"].startswith(PROTECTED_PREFIX) and not key_matches(
            self.api_key, _header(scope, b"authorization")
        ):
            return ApiError(
                401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )
        length = _header(scope, b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            return ApiError(
                413, f"request body of {int(length)} bytes is over the limit of {self.max_body_bytes} bytes",
                code="request_too_large",
            )
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            rejection = self._reject(scope)
            if rejection is not None:
                await error_response(rejection)(scope, receive, send_with_status)
            else:
                await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                route = scope["path"] if scope["path"] in self.known_paths else "other"
            self.metrics.observe_request(route, status, time.perf_counter() - start)
