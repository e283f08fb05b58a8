"""The typer application every command module registers on, and the order ``--help`` lists the commands in."""

from __future__ import annotations

import inspect

import click
import typer
from typer.core import TyperGroup, TyperOption

from llm_embedder.train.config import MAX_COUNT

# ``--help`` lists the commands by stage, each in the order the data flows through it
STAGES = {
    "Build and train": ("data", "score", "mine", "train", "evaluate", "demo", "ablate"),
    "Use a model": ("tasks", "encode", "index", "search", "augment", "serve", "export"),
}
ORDER = [name for names in STAGES.values() for name in names]


def _flag_shows_no_type(self: TyperOption, ctx: click.Context) -> str | None:
    """typer 0.29's rich help shows a flag as taking a value (``--json <bool>``), so ``--json true`` looked right
    and read ``true`` as the next argument; a flag takes none, and shows none."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_shows_no_type  # type: ignore[method-assign]


def _range_without_the_count_cap(self: TyperOption) -> str | None:
    """An option whose only upper bound is ``MAX_COUNT`` (every whole-number option's, against 40-digit values) shows
    its lower bound alone (``[x>=1]``): ``[1<=x<=2147483647]`` was split over two lines at 80 columns. A value above
    the cap is still refused, naming it."""
    if self.max == MAX_COUNT and self.min is not None:
        return f"x>={self.min}"
    return _number_range(self)


_number_range = TyperOption._get_number_range_help_str
TyperOption._get_number_range_help_str = _range_without_the_count_cap  # type: ignore[method-assign]


class StageOrderedGroup(TyperGroup):
    """Lists commands in ``ORDER`` (typer lists them as registered, sub-apps such as ``data`` last)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: ORDER.index(name) if name in ORDER else len(ORDER))


app = typer.Typer(
    name="llm-embedder",
    help="One embedding model for all of an LLM's retrieval needs, trained from the LLM's own feedback.",
    cls=StageOrderedGroup,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def show_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"llm-embedder {version('llm-embedder')}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                 help="Print the installed version and exit."),
) -> None:
    """One embedding model for all of an LLM's retrieval needs, trained from the LLM's own feedback."""


def arrange_commands() -> None:
    """Put every command in its stage's panel, give each a one-line summary (the first paragraph of its docstring)
    and a help text of whole paragraphs: typer 0.29's rich help keeps a docstring's line breaks, which then wrap
    mid-sentence at the terminal's width."""
    panel = {name: title for title, names in STAGES.items() for name in names}
    for info in [*app.registered_commands, *app.registered_groups]:
        if info.name in panel:
            info.rich_help_panel = panel[info.name]
    commands = [*app.registered_commands]
    for group in app.registered_groups:
        commands += group.typer_instance.registered_commands if group.typer_instance else []
    for info in commands:
        if info.short_help is None and info.help is None and info.callback is not None and info.callback.__doc__:
            paragraphs = [" ".join(part.split()) for part in inspect.cleandoc(info.callback.__doc__).split("\n\n")]
            info.short_help = paragraphs[0]
            info.help = "\n\n".join(paragraphs)
