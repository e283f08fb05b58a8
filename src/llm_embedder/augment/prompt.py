"""Prompt assembly: retrieved items + the query -> the LLM prompt for a task, within a token budget.

Per-task layouts are data (``LAYOUTS``), following the paper's evaluation prompts (recipe §3):
qa ``Knowledge: k1\\nk2\\n\\nQuestion: q\\nAnswer:``; icl demonstrations most-similar-last, then the query;
chat the retrieved turn(s) before ``Speaker 1: q\\nSpeaker 2:``; lrlm earlier chunks in document order,
concatenated before the current text; tool the tool descriptions before the request; convsearch
``Knowledge: ...\\n\\nContext and Question: q\\nAnswer:``. A task without a layout (a user-registered one)
uses ``GENERIC``; ``register_layout`` adds or replaces one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDERS = ("ranked", "reversed", "sequential")


@dataclass(frozen=True)
class Layout:
    """How a task's prompt is laid out: ``header + sep.join(items) + footer + query.format(query=...)``.

    ``order``: ``ranked`` keeps the retrieval order (best first), ``reversed`` puts the best item last
    (next to the query), ``sequential`` sorts by the items' positions in their source (when given).
    Without items the prompt is just the query part.
    """

    query: str = "{query}"
    header: str = ""
    separator: str = "\n"
    footer: str = "\n\n"
    order: str = "ranked"

    def __post_init__(self) -> None:
        for name in ("query", "header", "separator", "footer", "order"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"layout {name} must be a string, got {value!r}")
        if "{query}" not in self.query:
            raise ValueError(f"layout query template must contain {{query}}, got {self.query!r}")
        if self.order not in ORDERS:
            raise ValueError(f"layout order must be one of {ORDERS}, got {self.order!r}")

    def render(self, query: str, items: Sequence[str]) -> str:
        body = self.query.replace("{query}", query)
        if not items:
            return body
        return self.header + self.separator.join(items) + self.footer + body


GENERIC = Layout(header="Knowledge: ", query="Question: {query}\nAnswer:")
LAYOUTS: dict[str, Layout] = {
    "qa": Layout(header="Knowledge: ", separator="\n", footer="\n\n", query="Question: {query}\nAnswer:"),
    "icl": Layout(separator="\n", footer="\n", query="{query}\n", order="reversed"),
    "chat": Layout(separator="\n", footer="\n", query="Speaker 1: {query}\nSpeaker 2:"),
    "lrlm": Layout(separator="", footer="", query="{query}", order="sequential"),
    "tool": Layout(header="Available tools:\n", separator="\n", footer="\n\n", query="Request: {query}\nTool call:"),
    "convsearch": Layout(
        header="Knowledge: ", separator="\n", footer="\n\n", query="Context and Question: {query}\nAnswer:"
    ),
}


def register_layout(task: str, layout: Layout | dict[str, Any], *, overwrite: bool = True) -> Layout:
    """Add (or replace) the prompt layout of a task, e.g. for a user-registered task."""
    if isinstance(layout, dict):
        layout = Layout(**layout)
    if task in LAYOUTS and not overwrite:
        raise ValueError(f"task {task!r} already has a layout; pass overwrite=True")
    LAYOUTS[task] = layout
    return layout


def get_layout(task: str) -> Layout:
    """The layout of ``task``, or the generic knowledge layout for a registered task without one; a name that is
    neither (a typo, ``"QA"``) is refused, as the embedder and retriever refuse it."""
    if task in LAYOUTS:
        return LAYOUTS[task]
    from llm_embedder.tasks import get_task

    get_task(task)  # UnknownTaskError, listing the tasks
    return GENERIC


def check_tokenizer_name(name_or_path: str | Path, label: str = "tokenizer") -> None:
    """Refuse a tokenizer that is neither ``smollm2`` nor a model folder, before anything loads; ``label`` names
    the setting (the CLI's ``--tokenizer``)."""
    if str(name_or_path) != "smollm2" and not Path(name_or_path).is_dir():
        raise FileNotFoundError(f"{label} {str(name_or_path)!r} is neither a model directory nor 'smollm2'")


def load_tokenizer(name_or_path: str | Path) -> Any:
    """The HF tokenizer of ``smollm2`` (the bundled LLM) or of a model folder, for exact prompt budgets."""
    from transformers import AutoTokenizer

    check_tokenizer_name(name_or_path)
    path = str(name_or_path)
    if path == "smollm2":
        from llm_embedder.llm.loading import resolve_llm_path

        path = str(resolve_llm_path(path))
    return AutoTokenizer.from_pretrained(path)


_APPROX = re.compile(r"\w+|[^\w\s]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def approximate_tokens(text: str) -> int:
    """A token count without a tokenizer, meant to err high for the BPE tokenizers of small LLMs: a punctuation
    mark, a digit and a word of up to 7 letters are a token each, a longer word (a rare one, a compound, a URL's
    run) one per 2.5 letters, and a CJK character two (byte-level BPE splits its UTF-8 bytes). Against SmolLM2's
    tokenizer it reads 908 for English text of 744 tokens, 600 for 540 of Japanese and 208 for a URL of 206;
    counting words alone read 1 for the Japanese and 9 for the URL."""
    count = 0
    for piece in _APPROX.findall(text):
        if not (piece[0].isalnum() or piece[0] == "_"):
            count += 1
            continue
        cjk = len(_CJK.findall(piece))
        digits = sum(char.isdigit() for char in piece)
        letters = len(piece) - cjk - digits
        count += 2 * cjk + digits + ((1 if letters <= 7 else math.ceil(letters / 2.5)) if letters else 0)
    return count


def token_counter(tokenizer: Any = None) -> Callable[[str], int]:
    """A function text -> token count: a HF tokenizer (or ``smollm2`` or a model folder, ``load_tokenizer``), a
    model that holds one as ``.tokenizer`` (``CausalLM``,
    ``Embedder``: its tokenizer counts the whole text, without special tokens or the embedder's truncation), a
    callable returning a count or ids, or ``None`` for an estimate that errs high (``approximate_tokens``)."""
    if tokenizer is None:
        return approximate_tokens
    if isinstance(tokenizer, str | Path):  # a name or folder (a str has .encode too, which is no tokenizer's)
        tokenizer = load_tokenizer(tokenizer)
    inner = getattr(tokenizer, "tokenizer", None)
    if hasattr(inner, "encode"):
        tokenizer = inner
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    if hasattr(tokenizer, "count_tokens"):  # counts per text, or a total
        def count_with(text: str) -> int:
            out = tokenizer.count_tokens([text])
            return int(out if isinstance(out, int) else out[0])
        return count_with
    if callable(tokenizer):
        def count(text: str) -> int:
            out = tokenizer(text)
            return out if isinstance(out, int) else len(out)
        return count
    raise TypeError("tokenizer must be a tokenizer, a CausalLM, an Embedder or a callable, "
                    f"got {type(tokenizer).__name__}")


def _text(item: Any) -> str:
    text = item if isinstance(item, str) else getattr(item, "text", None)
    if not isinstance(text, str):
        raise TypeError(f"retrieved items must be strings (or hits with .text), got {type(item).__name__}")
    return text


def augment(
    task: str,
    query: str,
    retrieved: Sequence[Any],
    budget_tokens: int = 1024,
    tokenizer: Any = None,
    positions: Sequence[int] | None = None,
) -> str:
    """The LLM prompt for ``task`` with the retrieved items (best first), at most ``budget_tokens`` long.

    Items are taken best first; one that does not fit in what the budget has left is left out, and the ones after
    it still get their chance (a long second passage does not cost the prompt the third). ``positions`` (one per
    item) lets a ``sequential`` layout (lrlm) restore document order. Pass the target LLM's tokenizer for exact
    counts; without one the count is an estimate that errs high. A query that alone exceeds the budget is an error.
    """
    return fit_prompt(task, query, retrieved, budget_tokens, tokenizer, positions)[0]


def fit_prompt(
    task: str,
    query: str,
    retrieved: Sequence[Any],
    budget_tokens: int = 1024,
    tokenizer: Any = None,
    positions: Sequence[int] | None = None,
) -> tuple[str, int]:
    """``augment``'s prompt and the indices of the retrieved items it holds, in rank order."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a string, got {type(query).__name__}")
    if isinstance(retrieved, str):  # one item per character otherwise
        raise TypeError(f"retrieved is a string; pass a list of retrieved items, e.g. [{retrieved[:40]!r}]")
    if isinstance(budget_tokens, bool) or not isinstance(budget_tokens, int) or budget_tokens < 1:
        raise ValueError(f"budget_tokens must be a positive whole number, got {budget_tokens!r}")
    items = [_text(item) for item in retrieved]
    if positions is not None and len(positions) != len(items):
        raise ValueError(f"got {len(positions)} positions for {len(items)} retrieved items")
    layout = get_layout(task)
    count = token_counter(tokenizer)

    def render(chosen: list[int]) -> str:
        order = list(chosen)
        if layout.order == "reversed":
            order.reverse()
        elif layout.order == "sequential" and positions is not None:
            order.sort(key=lambda i: positions[i])
        return layout.render(query, [items[i] for i in order])

    base = count(render([]))
    if base > budget_tokens:
        raise ValueError(f"the query alone takes {base} tokens, over the budget of {budget_tokens}")
    kept: list[int] = []
    used = base
    for i, item in enumerate(items):
        # an item longer than what is left cannot fit (counted alone: no rendering of the whole prompt, which made
        # hundreds of items take a minute); the others are tried in the prompt, counted whole
        if count(item) > budget_tokens - used:
            continue
        total = count(render([*kept, i]))
        if total <= budget_tokens:
            kept.append(i)
            used = total
    return render(kept), kept


def hit_positions(hits: Sequence[Any]) -> list[int] | None:
    """The source positions of retrieved hits (``metadata["position"]``, as ``ChunkMemory`` stores them), for a
    ``sequential`` layout; None unless every hit has one."""
    positions = [getattr(hit, "metadata", {}).get("position") for hit in hits]
    if positions and all(isinstance(p, int) and not isinstance(p, bool) for p in positions):
        return positions
    return None
