"""The typer application every command module registers on."""

import typer

app = typer.Typer(
    name="llm-embedder",
    help="One embedding model for all of an LLM's retrieval needs, trained from the LLM's own feedback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
