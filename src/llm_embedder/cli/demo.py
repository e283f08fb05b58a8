"""`demo`: the README's main job."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_embedder.cli.app import app


@app.command("demo")
def demo_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Embedder directory or alias.")] = "minilm",
    quick: Annotated[bool, typer.Option(help="A smaller, faster run.")] = False,
    k: Annotated[int, typer.Option("-k", help="Hits shown per query.")] = 3,
) -> None:
    """Encode the bundled demo corpus of every task, search it, and print the top hits per query."""
    from llm_embedder.demo import run_demo

    run_demo(model=model, k=k)
