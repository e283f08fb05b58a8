"""The FastAPI app: OpenAI-compatible ``/v1/embeddings`` plus ``/v1/search`` and ``/v1/augment`` over indexes.

``create_app(embedder, retrievers, settings)`` wires one ``Embedder`` behind a dynamic ``Batcher``, which encodes
the texts of ``/v1/embeddings`` and the queries of ``/v1/search`` and ``/v1/augment`` alike; every route answers errors
in OpenAI's shape; ``GET /metrics`` is Prometheus, ``GET /health`` says what is served.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llm_embedder.index.base import (
    EmptyIndexError,
    FilterError,
    IndexUnavailableError,
    KLimitError,
    NonFiniteVectorsError,
)
from llm_embedder.io import blank_kind, finite_json
from llm_embedder.serve.batcher import Batcher
from llm_embedder.serve.errors import ApiError, install_error_handlers
from llm_embedder.serve.metrics import ServeMetrics
from llm_embedder.serve.middleware import GuardMiddleware
from llm_embedder.serve.schemas import (
    AugmentRequest,
    AugmentResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    SearchRequest,
    SearchResponse,
)
from llm_embedder.tasks import UnknownTaskError, get_task, list_tasks

log = logging.getLogger("llm_embedder.serve")
INLINE_TOKENIZE_CHARS = 20_000  # count tokens of bigger requests on a worker thread, off the event loop
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 500, 503)
}


@dataclass
class ServeSettings:
    """Limits and knobs of one server (the CLI flags of ``llm-embedder serve``)."""

    model_id: str = "llm-embedder"
    api_key: str | None = None
    max_inputs: int = 2048
    max_chars: int = 16_384
    max_batch_tokens: int = 8192
    max_batch_requests: int = 256
    max_wait_ms: float = 5.0
    max_queue: int = 4096
    max_k: int = 1000
    max_body_bytes: int = 32 * 1024 * 1024

    def body_limit(self) -> int:
        """Bytes a valid request can need (every input at its limit, JSON-escaped), capped by max_body_bytes."""
        # 12: a character outside the BMP, as JSON's ASCII escapes write it ("\\ud83d\\ude00")
        return min(self.max_body_bytes, self.max_inputs * (self.max_chars * 12 + 8) + 64 * 1024)


@dataclass
class ServeState:
    embedder: Any
    retrievers: Mapping[str, Any]
    settings: ServeSettings
    batcher: Batcher
    metrics: ServeMetrics
    created: int


def _state(request: Request) -> ServeState:
    return request.app.state.serve


def check_task(name: str) -> str:
    try:
        return get_task(name).name
    except UnknownTaskError as err:
        raise ApiError(400, str(err), param="task", code="unknown_task") from None


def check_texts(texts: list[str], settings: ServeSettings, param: str) -> None:
    """413 for too many texts or a text over the character limit."""
    if len(texts) > settings.max_inputs:
        raise ApiError(
            413, f"{param} has {len(texts)} items, over the limit of {settings.max_inputs} per request",
            param=param, code="too_many_inputs",
        )
    for i, text in enumerate(texts):
        if len(text) > settings.max_chars:
            where = param if len(texts) == 1 else f"{param}[{i}]"
            raise ApiError(
                413, f"{where} has {len(text)} characters, over the limit of {settings.max_chars}",
                param=where, code="input_too_long",
            )


def check_not_blank(texts: list[str], param: str, use: str = "search for") -> None:
    """400 for a text of only whitespace or invisible characters: it would be the instruction alone (a query
    finding the documents nearest to nothing, an embedding near every text), and the embedder refuses it. Named like
    the other checks: ``query``, or ``query[i]`` counted from 0 in a list; ``use`` words what the text is for."""
    for i, text in enumerate(texts):
        if blank_kind(text):
            where = param if len(texts) == 1 else f"{param}[{i}]"
            raise ApiError(400, f"{where} is blank; give the text to {use}", param=where, code="invalid_value")


def encode_vectors(vectors: np.ndarray, encoding_format: str) -> list[list[float]] | list[str]:
    """JSON floats, or base64 of little-endian float32 bytes (what OpenAI sends and its client decodes)."""
    if encoding_format == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]
    return vectors.astype(np.float32).tolist()


def shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Keep the first ``dimensions`` components, then renormalise each row to unit length."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.where(norms > 0, norms, 1.0)


async def count_tokens(state: ServeState, texts: list[str], task: str, role: str) -> int:
    """Tokens the model sees for ``texts`` (the batcher's bound and the usage figure); a big request is counted on
    a worker thread, off the event loop."""
    if sum(len(t) for t in texts) > INLINE_TOKENIZE_CHARS:
        return await asyncio.to_thread(state.embedder.count_tokens, texts, task, role)
    return state.embedder.count_tokens(texts, task, role)


def search_failed(err: Exception) -> ApiError:
    """A search's failure as the error to answer, naming the parameter at fault: a filter fault (a field the
    index lacks, a bad value) ``filter``, a k above what the index can return (a Milvus server's cap) ``k``, an
    empty index none; query vectors holding NaN come from the model, a server fault (500); a backend that does not
    answer (a Milvus server stopped) is unavailable (503), for the client to retry."""
    if isinstance(err, NonFiniteVectorsError):
        log.error("the model returned query vectors holding NaN or infinite values: %s", err)
        return ApiError(500, f"search failed: the model's {err}", code="internal_error")
    if isinstance(err, IndexUnavailableError):  # the backend (a Milvus server) is down: the client may retry later
        log.error("search failed: %s", err)
        return ApiError(503, f"search failed: the index is unavailable: {err}", code="index_unavailable")
    if isinstance(err, EmptyIndexError):
        return ApiError(400, f"search failed: {err}", code="empty_index")
    param = "filter" if isinstance(err, FilterError) else "k" if isinstance(err, KLimitError) else None
    return ApiError(400, f"search failed: {err}", param=param, code="invalid_value")


def batches_queries(state: ServeState, retriever: Any) -> bool:
    """Whether the server's batcher may encode this retriever's queries: only with the embedder the retriever
    was built for (the CLI loads every index with the server's one); any other retriever encodes its own."""
    return getattr(retriever, "embedder", None) is state.embedder and hasattr(retriever, "search_vectors_many")


def hit_dict(hit: Any) -> dict[str, Any]:
    return {"id": int(hit.id), "score": float(hit.score), "text": hit.text,
            "metadata": finite_json(dict(hit.metadata or {}))}


def build_router() -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        """Liveness and what is served: model, dimension, indexes (with their task), tasks."""
        state = _state(request)
        return {
            "status": "ok", "model": state.settings.model_id, "dim": state.embedder.dim,
            "indexes": {name: getattr(r, "task", None) for name, r in state.retrievers.items()},
            "tasks": list_tasks(), "queued": state.batcher.queued,
        }

    @router.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition: requests, latency histogram, batch sizes."""
        state = _state(request)
        state.metrics.queue_depth.set(state.batcher.queued)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    def model_card(state: ServeState) -> dict[str, Any]:
        return {"id": state.settings.model_id, "object": "model", "created": state.created, "owned_by": "llm-embedder"}

    @router.get("/v1/models", responses=ERROR_RESPONSES)
    async def models(request: Request) -> dict[str, Any]:
        """The one model this server embeds with (OpenAI's list shape)."""
        return {"object": "list", "data": [model_card(_state(request))]}

    @router.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        state = _state(request)
        if model_id != state.settings.model_id:
            raise ApiError(404, f"model {model_id!r} not found; this server serves {state.settings.model_id!r}",
                           param="model", code="model_not_found")
        return model_card(state)

    @router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        """Embed texts with the task's query or key instruction, as OpenAI's embeddings endpoint does."""
        state = _state(request)
        if body.model != state.settings.model_id:
            raise ApiError(404, f"model {body.model!r} not found; this server serves {state.settings.model_id!r}",
                           param="model", code="model_not_found")
        task = check_task(body.task)
        texts = body.texts()
        check_texts(texts, state.settings, "input")
        check_not_blank(texts, "input", "embed")  # "" is refused by the schema, "  " here
        dim = state.embedder.dim
        if body.dimensions is not None and body.dimensions > dim:
            raise ApiError(400, f"dimensions must be between 1 and {dim} for this model, got {body.dimensions}",
                           param="dimensions", code="invalid_value")
        tokens = await count_tokens(state, texts, task, body.role)
        vectors = shorten(await state.batcher.embed(texts, task, body.role, tokens), body.dimensions)
        data = [
            {"object": "embedding", "index": i, "embedding": emb}
            for i, emb in enumerate(encode_vectors(vectors, body.encoding_format))
        ]
        return JSONResponse({
            "object": "list", "data": data, "model": state.settings.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    def pick_index(state: ServeState, index: str | None, task: str | None) -> tuple[str, Any]:
        names = ", ".join(sorted(state.retrievers)) or "none (start the server with --index NAME=DIR)"
        if index is not None:
            if index not in state.retrievers:
                raise ApiError(404, f"unknown index {index!r}; indexes: {names}", param="index",
                               code="index_not_found")
            built_for = getattr(state.retrievers[index], "task", None)
            if task is not None and built_for is not None and task != built_for:  # as the search CLI's --task
                raise ApiError(400, f"index {index!r} was built for task {built_for!r}, not {task!r}", param="task",
                               code="invalid_value")
            return index, state.retrievers[index]
        if task is None:
            raise ApiError(400, "give `index` or `task`", param="index", code="missing_required_parameter")
        for name, retriever in state.retrievers.items():
            if getattr(retriever, "task", None) == task:
                return name, retriever
        raise ApiError(404, f"no index for task {task!r}; indexes: {names}", param="task", code="index_not_found")

    async def search_hits(state: ServeState, retriever: Any, queries: list[str], k: int,
                          filter: dict[str, Any] | None) -> list[list[Any]]:
        """Hits per query: the queries are encoded in the batcher's shared model batches, then the index is
        searched on the model thread for the requests of the batch together (``Retriever.search_vectors_many``: one
        search for those of equal filter, each with its own k)."""
        if k > state.settings.max_k:
            raise ApiError(400, f"k must be at most {state.settings.max_k}, got {k}", param="k", code="invalid_value")
        check_not_blank(queries, "query")  # "" is refused by the schema, "  " here
        if not batches_queries(state, retriever):
            try:
                return await state.batcher.run(partial(retriever.search, queries, k=k, filter=filter))
            except (ValueError, KeyError, TypeError) as err:
                raise search_failed(err) from None
        # the queries join the dynamic batches of /v1/embeddings, and the index search the batch's other searches
        try:
            retriever.check_filter_fields(filter)  # a bad filter is refused before it costs a model call
        except (ValueError, KeyError, TypeError) as err:
            raise search_failed(err) from None
        task = retriever.task  # the instruction, role and max length retriever.search encodes with
        tokens = await count_tokens(state, queries, task, "query")
        hits = await state.batcher.embed_then(queries, task, "query", tokens, retriever.search_vectors_many,
                                              {"k": k, "filter": filter})
        if isinstance(hits, ValueError | KeyError | TypeError):  # this request's search failed (returned, not raised)
            raise search_failed(hits) from None
        if isinstance(hits, Exception):
            raise hits
        return hits

    @router.post("/v1/search", response_model=SearchResponse, responses=ERROR_RESPONSES)
    async def search(body: SearchRequest, request: Request) -> Response:
        """Nearest keys of a named index for each query (embedded with the index's task instruction)."""
        state = _state(request)
        if body.task is not None:
            check_task(body.task)
        name, retriever = pick_index(state, body.index, body.task)
        queries = body.queries()
        check_texts(queries, state.settings, "query")
        results = await search_hits(state, retriever, queries, body.k, body.filter)
        data = [
            {"object": "search_result", "index": i, "query": q, "hits": [hit_dict(h) for h in hits]}
            for i, (q, hits) in enumerate(zip(queries, results, strict=True))
        ]
        return JSONResponse({"object": "list", "index": name, "task": getattr(retriever, "task", None),
                             "model": state.settings.model_id, "data": data})

    @router.post("/v1/augment", response_model=AugmentResponse, responses=ERROR_RESPONSES)
    async def augment_route(body: AugmentRequest, request: Request) -> Response:
        """Retrieve for a query and return the prompt assembled for the LLM within a token budget."""
        from llm_embedder.augment.prompt import fit_prompt, hit_positions

        state = _state(request)
        if body.task is not None:
            check_task(body.task)
        name, retriever = pick_index(state, body.index, body.task)
        task = body.task or retriever.task
        check_texts([body.query], state.settings, "query")
        hits = (await search_hits(state, retriever, [body.query], body.k, body.filter))[0]
        try:
            prompt, kept = await asyncio.to_thread(  # lrlm's chunks in document order, where the index has them
                fit_prompt, task, body.query, [h.text for h in hits], budget_tokens=body.budget_tokens,
                positions=hit_positions(hits),
            )
        except ValueError as err:  # e.g. the query alone is over the budget
            raise ApiError(400, str(err), param="budget_tokens", code="invalid_value") from None
        return JSONResponse({"object": "augmentation", "index": name, "task": task, "model": state.settings.model_id,
                             "prompt": prompt, "hits": [hit_dict(hits[i]) for i in kept],
                             "dropped": len(hits) - len(kept)})

    return router


def create_app(
    embedder: Any, retrievers: Mapping[str, Any] | None = None, settings: ServeSettings | None = None
) -> FastAPI:
    """An app serving ``embedder`` (an ``Embedder``) and the named ``Retriever`` objects, under ``settings``."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    batcher = Batcher(
        partial(embedder.encode, show_progress=False),  # no progress bar in the server's log
        max_batch_tokens=settings.max_batch_tokens, max_batch_requests=settings.max_batch_requests,
        max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue, on_batch=metrics.observe_batch,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="llm-embedder", summary="OpenAI-compatible embeddings, search and augmentation.",
                  lifespan=lifespan, strict_content_type=False)  # a body without Content-Type is read as JSON
    app.state.serve = ServeState(embedder, dict(retrievers or {}), settings, batcher, metrics, int(time.time()))
    router = build_router()
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(GuardMiddleware, api_key=settings.api_key, max_body_bytes=settings.body_limit(),
                       metrics=metrics, routes=router.routes)
    return app
