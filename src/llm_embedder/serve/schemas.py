"""Request and response bodies of the HTTP API (pydantic), shaped like OpenAI's where OpenAI has one.

Requests are validated here; anything wrong names its field (``input``, ``input[2]``, ``k`` ...), and the app turns
the pydantic error into OpenAI's error shape. Responses are documented with models but built as plain dicts for
speed (a 2048 x 384 float response through pydantic validation costs more than the model call).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

TOKEN_ARRAYS_MESSAGE = (
    "must be a string or a list of strings; token-id arrays are not supported by this server, send the text"
)


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (JSON's "\\ud800"), which no tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text_or_texts(value: Any, *, allow_empty_string: bool = False) -> str | list[str]:
    """A string or a non-empty list of strings; the message names the offending element."""
    if isinstance(value, str):
        if not value and not allow_empty_string:
            raise ValueError("must not be an empty string")
        if not _is_unicode(value):
            raise ValueError("is not valid Unicode (it holds a lone surrogate)")
        return value
    if not isinstance(value, list):
        raise ValueError(f"{TOKEN_ARRAYS_MESSAGE} (got {type(value).__name__})")
    if not value:
        raise ValueError("must not be an empty list")
    if all(isinstance(item, int | list) and not isinstance(item, bool) for item in value):
        raise ValueError(TOKEN_ARRAYS_MESSAGE)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"[{i}] must be a string, got {type(item).__name__}")
        if not item and not allow_empty_string:
            raise ValueError(f"[{i}] must not be an empty string")
        if not _is_unicode(item):
            raise ValueError(f"[{i}] is not valid Unicode (it holds a lone surrogate)")
    return value


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's body plus ``task`` and ``role`` (which instruction to apply)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send fields we do not use

    input: str | list[str] = Field(description="Text or list of texts to embed.")
    model: str = Field(description="Model id, as listed by GET /v1/models.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes, base64-encoded."
    )
    dimensions: StrictInt | None = Field(None, ge=1, description="Keep the first N dimensions, then renormalise.")
    user: str | None = None
    task: str = Field("qa", description="Task whose instruction is applied (GET /health lists them).")
    role: Literal["query", "key"] = Field("query", description="query or key: which of the task's instructions.")

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, value: Any) -> str | list[str]:
        return _check_text_or_texts(value)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class SearchRequest(BaseModel):
    """``POST /v1/search``: nearest keys of one named index for one or more queries."""

    model_config = ConfigDict(extra="forbid")

    index: str | None = Field(None, description="Index name, as given to --index NAME=DIR (GET /health lists them).")
    task: str | None = Field(
        None, description="Task whose index is used when `index` is absent; with `index`, the index's task."
    )
    query: str | list[str] = Field(description="Query text or list of query texts.")
    k: StrictInt = Field(10, ge=1, description="Hits per query.")
    filter: dict[str, Any] | None = Field(None, description="Metadata filter, passed to the retriever.")

    @field_validator("query", mode="before")
    @classmethod
    def _check_query(cls, value: Any) -> str | list[str]:
        return _check_text_or_texts(value)

    def queries(self) -> list[str]:
        return [self.query] if isinstance(self.query, str) else list(self.query)


class Hit(BaseModel):
    id: int
    score: float
    text: str
    metadata: dict[str, Any] = {}


class SearchResult(BaseModel):
    object: Literal["search_result"] = "search_result"
    index: int = Field(description="Position of the query in the request.")
    query: str
    hits: list[Hit]


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    index: str
    task: str
    model: str
    data: list[SearchResult]


class AugmentRequest(BaseModel):
    """``POST /v1/augment``: retrieve for a query and return the prompt to give the LLM."""

    model_config = ConfigDict(extra="forbid")

    index: str | None = Field(None, description="Index to retrieve from; or give `task` to use its index.")
    task: str | None = Field(
        None, description="Task whose index is used when `index` is absent; with `index`, the index's task."
    )
    query: str = Field(min_length=1, description="The user's query.")
    k: StrictInt = Field(5, ge=1, description="Passages retrieved.")
    budget_tokens: StrictInt = Field(1024, ge=1, description="Token budget of the whole prompt, query included.")
    filter: dict[str, Any] | None = None


class AugmentResponse(BaseModel):
    object: Literal["augmentation"] = "augmentation"
    index: str
    task: str
    model: str
    prompt: str
    hits: list[Hit]  # those the prompt holds, best first
    dropped: int = 0  # hits retrieved but left out to keep the prompt within budget_tokens


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
