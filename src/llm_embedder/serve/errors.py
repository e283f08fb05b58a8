"""Every error leaves the server in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Handlers here turn our ``ApiError``, FastAPI's validation errors (a field named in ``param`` and the message),
Starlette's 404/405 and any unexpected exception into that shape, so clients (the ``openai`` package among
them) raise their usual typed errors, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_embedder.serve.batcher import QueueFullError

log = logging.getLogger("llm_embedder.serve")

ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
               503: "server_error", 500: "server_error"}


class ApiError(Exception):
    """An error to answer with ``status`` and OpenAI's error body."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers


def _encodable(text: str | None) -> str | None:
    """The text with any lone surrogate (a client's bad field name quoted back) written as its escape, which
    a JSON response can carry."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(err: ApiError) -> JSONResponse:
    body = {"error": {"message": _encodable(err.message), "type": err.type, "param": _encodable(err.param),
                      "code": err.code}}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _param(loc: tuple[Any, ...]) -> str | None:
    """``("body", "input", 2)`` -> ``input[2]``."""
    parts = [p for p in loc if p != "body"]
    if not parts:
        return None
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first validation problem, as a 400 naming its field (OpenAI answers 400 to a bad parameter)."""
    errors = exc.errors()
    if not errors:
        return ApiError(400, "invalid request body", code="invalid_request")
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", first.get("msg", ""))
        return ApiError(400, f"the request body is not valid JSON: {reason}", code="invalid_json")
    param = _param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "missing":
        text = f"missing required field {param!r}" if param else "the request needs a JSON body"
        return ApiError(400, text, param=param, code="missing_required_parameter")
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field {param!r}", param=param, code="unknown_parameter")
    if param is None:
        text = f"the request body must be a JSON object (Content-Type: application/json): {message}"
    elif message.startswith("["):  # "[1] must be a string": the message names the element, so does param
        text = f"{param}{message}"
        param = f"{param}{message[: message.index(']') + 1]}" if "]" in message else param
    else:
        text = f"{param}: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return ApiError(400, text, param=param, code="invalid_value")


def body_not_utf8(request: Request) -> str | None:
    """Why a read request body is not UTF-8 (FastAPI says only "There was an error parsing the body"), or None."""
    body = getattr(request, "_body", None)  # Starlette keeps the body it has read here
    if not isinstance(body, bytes):
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as err:
        return (f"the request body is not valid UTF-8 (JSON must be): byte 0x{body[err.start]:02x} at offset "
                f"{err.start}")
    return None


def install_error_handlers(app: FastAPI) -> None:
    """Register handlers so that no error leaves in any shape but OpenAI's."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 400 and (problem := body_not_utf8(request)):
            return error_response(ApiError(400, problem, code="invalid_json"))
        return error_response(ApiError(exc.status_code, message, code=code, headers=getattr(exc, "headers", None)))

    @app.exception_handler(QueueFullError)
    async def _busy(request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(ApiError(503, f"server overloaded: {exc}", code="overloaded"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"))
