"""The ASGI layer in front of every route: API key, body-size limit, and request metrics.

Written as plain ASGI (not BaseHTTPMiddleware) because it runs on every request of a latency-sensitive server.
The key is checked before the body is read, so an unauthenticated client gets 401 whatever it sends. A body
with a Content-Length over the limit is refused unread; one sent without it (chunked) is read here up to the
limit and handed on, or refused as soon as it passes the limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_embedder.serve.errors import ApiError, error_response
from llm_embedder.serve.metrics import ServeMetrics
from llm_embedder.serve.security import key_matches

PROTECTED_PREFIX = "/v1/"
BODY_METHODS = ("POST", "PUT", "PATCH")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class GuardMiddleware:
    """Reject bad keys (401) and oversized bodies (413); time and count every request by route."""

    def __init__(
        self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, metrics: ServeMetrics,
        routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.routes = routes  # to name the route of a request refused before routing (401, 413)

    def _route_name(self, scope: Scope) -> str:
        """The path template of the route a request was for (its own, once routed), or "other"."""
        routed = getattr(scope.get("route"), "path", None)
        if routed is not None:
            return routed
        for route in self.routes:
            if route.matches(scope)[0] is not Match.NONE:  # PARTIAL: the path with another method
                return getattr(route, "path", "other")
        return "other"

    def _reject(self, scope: Scope, length: str | None) -> ApiError | None:
        """401 for a bad key, 413 for a declared ``length`` (the Content-Length header) over the limit."""
        if scope["path"].startswith(PROTECTED_PREFIX) and not key_matches(
            self.api_key, _header(scope, b"authorization")
        ):
            return ApiError(
                401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            return self._too_large(int(length))
        return None

    def _too_large(self, length: int | None = None) -> ApiError:
        size = f"request body of {length} bytes" if length is not None else "request body"
        return ApiError(413, f"{size} is over the limit of {self.max_body_bytes} bytes", code="request_too_large")

    async def _read_capped(self, receive: Receive) -> list[Message] | None:
        """A body sent without Content-Length, as its messages; None once it passes the limit."""
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: let the app see it
                return messages
            total += len(message.get("body", b""))
            if total > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                return messages

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
            length = _header(scope, b"content-length")
            rejection = self._reject(scope, length)
            if rejection is None and scope["method"] in BODY_METHODS and length is None:
                messages = await self._read_capped(receive)
                if messages is None:
                    rejection = self._too_large()
                else:
                    receive = _replay(messages, receive)
            if rejection is not None:
                await error_response(rejection)(scope, receive, send_with_status)
            else:
                await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(self._route_name(scope), status, time.perf_counter() - start)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives back the messages already read, then the real ones."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
