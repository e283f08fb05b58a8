"""The demo: every task's bundled mini corpus encoded with its instructions, searched, top hits printed."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table


def load_demo_corpus() -> dict[str, dict[str, Any]]:
    """Per task: ``keys``, ``queries`` and, per query, the indices of the relevant keys."""
    text = resources.files("llm_embedder").joinpath("resources/demo_corpus.json").read_text(encoding="utf-8")
    return json.loads(text)


def run_demo(model: str = "minilm", k: int = 3, console: Console | None = None) -> dict[str, dict[str, float]]:
    """Print the top-k keys for each demo query.

    Returns per task the share of queries whose first hit is relevant (``top1``) and whose top k hold a relevant
    key (``in_top_k``): with two queries a task, top-1 alone reads 0.00 where every relevant key is second.
    """
    from llm_embedder.embedder import Embedder

    console = console or Console()
    embedder = Embedder(model)
    shares: dict[str, dict[str, float]] = {}
    for task, data in load_demo_corpus().items():
        keys = embedder.encode_keys(data["keys"], task)
        queries = embedder.encode_queries(data["queries"], task)
        scores = queries @ keys.T
        table = Table(title=f"task {task}", show_lines=True, title_justify="left")
        table.add_column("query", max_width=50)
        table.add_column("top hits (score)", max_width=90)
        first_hits, top_k_hits = 0, 0
        for query, row, relevant in zip(data["queries"], scores, data["relevant"], strict=True):
            order = np.argsort(-row)[:k]
            first_hits += int(order[0] in relevant)
            top_k_hits += int(any(i in relevant for i in order))
            lines = [f"{'*' if i in relevant else ' '} {row[i]:.3f}  {data['keys'][i][:80]}" for i in order]
            table.add_row(query, "\n".join(lines))
        n = len(data["queries"])
        shares[task] = {"top1": first_hits / n, "in_top_k": top_k_hits / n}
        console.print(table)
    console.print(
        "* marks a relevant key. Queries whose first hit is relevant: "
        + ", ".join(f"{t} {s['top1']:.2f}" for t, s in shares.items())
    )
    console.print(
        f"Queries with a relevant key in the top {k}: "
        + ", ".join(f"{t} {s['in_top_k']:.2f}" for t, s in shares.items())
    )
    return shares
