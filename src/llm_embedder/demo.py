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


def run_demo(model: str = "minilm", k: int = 3, console: Console | None = None) -> dict[str, float]:
    """Print the top-k keys for each demo query; returns each task's top-1 accuracy."""
    from llm_embedder.embedder import Embedder

    console = console or Console()
    embedder = Embedder(model)
    accuracy = {}
    for task, data in load_demo_corpus().items():
        keys = embedder.encode_keys(data["keys"], task)
        queries = embedder.encode_queries(data["queries"], task)
        scores = queries @ keys.T
        table = Table(title=f"task {task}", show_lines=True, title_justify="left")
        table.add_column("query", max_width=50)
        table.add_column("top hits (score)", max_width=90)
        hits = 0
        for query, row, relevant in zip(data["queries"], scores, data["relevant"], strict=True):
            order = np.argsort(-row)[:k]
            hits += int(order[0] in relevant)
            lines = [
                f"{'*' if i in relevant else ' '} {row[i]:.3f}  {data['keys'][i][:80]}" for i in order
            ]
            table.add_row(query, "\n".join(lines))
        accuracy[task] = hits / len(data["queries"])
        console.print(table)
    console.print("top-1 accuracy (* marks a relevant key): " + ", ".join(f"{t} {a:.2f}" for t, a in accuracy.items()))
    return accuracy
