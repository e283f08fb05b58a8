"""``ToolBox`` (task ``tool``): register functions from JSON schema or Python callables, retrieve the ones a
request needs, verbalised as the tool task trains on: ``name: description | required: p (type): text; ...``."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llm_embedder.augment.prompt import augment
from llm_embedder.augment.stores import _Store
from llm_embedder.index.base import check_k

_PY_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object"}
_PY_NAMES = {t.__name__: name for t, name in _PY_TYPES.items()}


@dataclass(frozen=True)
class Param:
    name: str
    type: str = "any"
    description: str = ""
    required: bool = True


@dataclass
class Tool:
    """A tool the LLM can call: its description, parameters and (for registered callables) the function."""

    name: str
    description: str
    parameters: list[Param] = field(default_factory=list)
    fn: Callable[..., Any] | None = None

    def verbalise(self) -> str:
        """``name: description | required: p (type): text; ... | optional: ...`` — the key text that is embedded,
        in the form the tool task trains and evaluates on (``data.tool.verbalise``)."""
        from llm_embedder.data.tool import verbalise

        properties = {p.name: {"type": p.type, "description": p.description} for p in self.parameters}
        required = [p.name for p in self.parameters if p.required]
        return verbalise({"name": self.name, "description": self.description,
                          "parameters": {"properties": properties, "required": required}})

    def __call__(self, **kwargs: Any) -> Any:
        if self.fn is None:
            raise ValueError(
                f"tool {self.name!r} has no Python function: it was registered from a schema, or reopened from an "
                "index (which keeps only its description; register it again to call it)"
            )
        return self.fn(**kwargs)

    def document(self) -> dict:
        """What the index keeps of the tool: its key text, and its name, description and parameters to
        rebuild it from when the ToolBox is reopened."""
        return {"text": self.verbalise(), "name": self.name, "description": self.description,
                "parameters": [asdict(p) for p in self.parameters]}


_KEY_PARAM = re.compile(r"(?:^|; )(\w+) \((.*?), (required|optional)\)")


def tool_from_document(doc: Mapping[str, Any]) -> Tool:
    """A tool known only by what its index keeps (no function). An index written before the description and
    parameters were stored has only the key text: they are parsed back from it."""
    name, text = doc["name"], doc["text"]
    if isinstance(doc.get("description"), str) and isinstance(doc.get("parameters"), list):
        return Tool(name, doc["description"], [Param(**p) for p in doc["parameters"]])
    body = text.removeprefix(f"{name}: ").removesuffix(".")
    description, _, listed = body.partition(". Parameters: ")
    found = list(_KEY_PARAM.finditer(listed)) if listed != "none" else []
    ends = [m.start() for m in found[1:]] + [len(listed)]
    params = [Param(m[1], m[2], listed[m.end() : end].removeprefix(": "), m[3] == "required")
              for m, end in zip(found, ends, strict=True)]
    return Tool(name, description, params)


def tool_from_callable(fn: Callable[..., Any], name: str | None = None, description: str | None = None) -> Tool:
    """Name, first docstring paragraph and signature (annotations, defaults) of a Python function."""
    doc = inspect.getdoc(fn) or ""
    summary = description or doc.split("\n\n")[0].replace("\n", " ").strip()
    arg_docs = _arg_docs(doc)
    try:
        signature = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError):  # an annotation that cannot be resolved: keep it as text
        signature = inspect.signature(fn)
    params = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = p.annotation
        type_name = _PY_TYPES.get(annotation, getattr(annotation, "__name__", str(annotation)))
        type_name = _PY_NAMES.get(type_name, type_name)
        if annotation is inspect.Parameter.empty:
            type_name = "any"
        params.append(Param(p.name, type_name, arg_docs.get(p.name, ""), p.default is inspect.Parameter.empty))
    return Tool(name or fn.__name__, summary or (name or fn.__name__), params, fn)


def _arg_docs(doc: str) -> dict[str, str]:
    """Parameter descriptions from ``name: text`` / ``name (type): text`` lines of a docstring."""
    out = {}
    for line in doc.splitlines():
        line = line.strip()
        if ":" in line and not line.startswith(("Returns", "Raises")):
            head, text = line.split(":", 1)
            head = head.split("(")[0].strip()
            if head.isidentifier():
                out[head] = text.strip()
    return out


def tool_from_schema(schema: Mapping[str, Any], where: str = "schema") -> Tool:
    """A tool from an OpenAI-style / BFCL function schema (``{"type": "function", "function": {...}}`` or the
    inner ``{"name", "description", "parameters": {"properties", "required"}}``)."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"{where}: a tool schema must be a mapping, got {type(schema).__name__}")
    if "function" in schema and isinstance(schema["function"], Mapping):
        schema = schema["function"]
    name = schema.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: missing field 'name'")
    parameters = schema.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise ValueError(f"{where} ({name!r}): field 'parameters' must be an object")
    where = f"{where} ({name!r})"
    properties = parameters.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise ValueError(f"{where}: field 'parameters.properties' must be an object mapping each parameter name to "
                         f"its schema, got {type(properties).__name__}")
    required = parameters.get("required") or []
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ValueError(f"{where}: field 'parameters.required' must be a list of parameter names, got "
                         f"{type(required).__name__}")
    required = set(required)
    params = [
        Param(p, str(spec.get("type", "any")) if isinstance(spec, Mapping) else "any",
              str(spec.get("description", "")) if isinstance(spec, Mapping) else "", p in required)
        for p, spec in properties.items()
    ]
    return Tool(name, str(schema.get("description") or name), params)


class ToolBox(_Store):
    """Tools to offer an LLM; ``retrieve(request)`` returns the few a request needs.

    Reopened from ``index_dir``, it knows the tools the index holds by their stored description, without
    their Python functions (which cannot be read back): retrieve and prompt work, ``call`` needs the tool
    registered again. Registering a tool so reopened replaces it (its key is re-encoded only if it changed).
    """

    task = "tool"

    def __init__(self, embedder: Any, tools: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(embedder, **kwargs)
        self.tools: dict[str, Tool] = {}
        self._ids: dict[str, list[int]] = {}  # index ids under each name (more than one: an older duplicate)
        self._stored: dict[str, dict] = {}  # tools reopened from the index and not registered again
        for i, doc in self.retriever.documents():
            if not isinstance(doc.get("name"), str) or not doc["name"]:
                raise ValueError(f"{self.retriever.out_dir}: document {i} has no tool 'name', so ToolBox cannot "
                                 "place it; open this index with the store that wrote it")
            self.tools[doc["name"]] = tool_from_document(doc)  # a later document of the same name wins
            self._ids.setdefault(doc["name"], []).append(i)
            self._stored[doc["name"]] = doc
        for tool in tools:
            self.register(tool)

    def __len__(self) -> int:
        """How many tools it knows (the index may still hold an older duplicate that it does not count)."""
        return len(self.tools)

    def register(self, tool: Callable[..., Any] | Mapping[str, Any] | Tool, name: str | None = None,
                 description: str | None = None) -> Tool:
        """Register a Python callable, a JSON schema (dict) or a ``Tool``; names must be unique, except that a
        tool reopened from the index is replaced."""
        if isinstance(tool, Tool):
            entry = tool
        elif isinstance(tool, Mapping):
            entry = tool_from_schema(tool, where=f"tool #{len(self.tools)}")
        elif callable(tool):
            entry = tool_from_callable(tool, name, description)
        else:
            raise TypeError(f"cannot register {type(tool).__name__} as a tool: pass a callable or a JSON schema")
        with self.retriever.lock:  # two threads registering one name would both pass the check
            if entry.name in self.tools and entry.name not in self._stored:
                raise ValueError(f"a tool named {entry.name!r} is already registered")
            doc, old = entry.document(), self._ids.get(entry.name, [])
            if self._stored.pop(entry.name, None) != doc or len(old) > 1:
                self._ids[entry.name] = self.retriever.add([doc])  # the new key first: nothing is lost if it fails
                try:
                    if old:
                        self.retriever.delete(old)
                except ValueError:  # a factory that cannot delete: the old key stays, retrieval skips it by name
                    self._ids[entry.name] = [*old, *self._ids[entry.name]]
            self.tools[entry.name] = entry
        return entry

    def unregister(self, name: str) -> Tool:
        """Remove a tool: retrieval no longer returns it and ``call`` no longer knows it. An index that cannot
        delete (HNSW) refuses and keeps it."""
        with self.retriever.lock:
            if name not in self.tools:
                raise KeyError(f"unknown tool {name!r}; registered: {', '.join(self.tools) or 'none'}")
            self.retriever.delete(self._ids[name])
            del self._ids[name]
            self._stored.pop(name, None)
            return self.tools.pop(name)

    def retrieve(self, request: str, k: int = 3) -> list[Tool]:
        """The ``k`` tools most useful for ``request``, best first."""
        return [tool for tool, _ in self.retrieve_scored(request, k)]

    def retrieve_scored(self, request: str, k: int = 3) -> list[tuple[Tool, float]]:
        """Like ``retrieve``, with each tool's similarity score (to decide whether to use a tool at all)."""
        check_k(k)
        extra = max(0, len(self.retriever) - len(self.tools))  # older duplicates, each tool counted once
        out: dict[str, float] = {}
        for hit in self._search(request, k + extra):
            out.setdefault(hit.metadata["name"], hit.score)
        return [(self.tools[name], score) for name, score in list(out.items())[:k]]

    def call(self, name: str, **kwargs: Any) -> Any:
        if name not in self.tools:
            raise KeyError(f"unknown tool {name!r}; registered: {', '.join(self.tools)}")
        return self.tools[name](**kwargs)

    def prompt(self, request: str, k: int = 3, budget_tokens: int = 1024, tokenizer: Any = None) -> str:
        return augment(self.task, request, [t.verbalise() for t in self.retrieve(request, k)], budget_tokens,
                       tokenizer)
