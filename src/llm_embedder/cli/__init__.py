"""The command line: a thin layer over the library. Each module registers its commands on ``app``."""

from __future__ import annotations

import sys
import warnings

from rich.console import Console
from rich.markup import escape
from typer import Abort

try:  # typer 0.29 runs its own copy of click: its usage errors are of this class, not click's
    from typer._click.exceptions import UsageError
except ImportError:  # a typer on the installed click
    from click.exceptions import UsageError

from llm_embedder.cli import ablate, basic, data, demo, evaluate, export, index, score, serve, train  # noqa: F401  (registers commands)
from llm_embedder.cli.app import app, arrange_commands
from llm_embedder.data.loaders import NoRelevantWarning
from llm_embedder.embedder import TaskRedefinedWarning
from llm_embedder.evaluate.run import CorpusMissingWarning
from llm_embedder.extras import MissingExtraError, extra_of, install_hint
from llm_embedder.io import DataError
from llm_embedder.models import ModelChangedWarning
from llm_embedder.tasks import UnknownTaskError
from llm_embedder.train.mine import FewNegativesWarning

arrange_commands()

# a path of the wrong kind (a directory given for a file, a file for a folder) is the user's to fix, like a missing one
USER_ERRORS = (
    DataError, UnknownTaskError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError,
    PermissionError, ValueError, MissingExtraError,
)


# warnings meant for the user, printed as one line like the errors (not Python's file:line and source line)
USER_WARNINGS = (ModelChangedWarning, FewNegativesWarning, TaskRedefinedWarning, CorpusMissingWarning,
                 NoRelevantWarning)


def show_user_warnings() -> None:
    """Print the library's user warnings as ``warning: message``; other warnings as Python prints them."""
    python_way = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # the signature of warnings.showwarning
        if issubclass(category, USER_WARNINGS):
            text = escape(str(message))  # a path or text with brackets is not a style tag
            Console(stderr=True).print(f"[bold yellow]warning:[/] {text}", highlight=False, soft_wrap=True)
        else:
            python_way(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main() -> None:
    """Console entry point: user errors print one clear line and exit 2, without a traceback."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars on every command are noise
    show_user_warnings()
    try:
        try:
            code = app(standalone_mode=False)  # usage errors come here, to be printed as the others are
        except UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # the help was printed: nothing is wrong to say
                sys.exit(err.exit_code)
            ctx = getattr(err, "ctx", None)
            see = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            Console(stderr=True).print(f"[bold red]error:[/] {escape(err.format_message())}{escape(see)}",
                                       highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)
        except Abort:  # Ctrl-C while a prompt or the command ran, as typer's own handler says it
            Console(stderr=True).print("Aborted.", highlight=False)
            sys.exit(1)
        except ModuleNotFoundError as err:  # an optional extra's module, imported where no check came first
            extra = extra_of(err.name)
            if extra is None:
                raise
            raise MissingExtraError(f"this needs the {extra!r} extra: {install_hint(extra)} (missing: {err.name})"
                                    ) from None
        except BrokenPipeError:  # `llm-embedder ... | head`: the reader left, as typer's own handler treats it
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)  # as typer's standalone mode ends, a success included
    except USER_ERRORS as err:
        message = str(err)
        if isinstance(err, OSError) and err.strerror and message.startswith(f"[Errno {err.errno}]"):
            # raised by Python itself, not by us: "Is a directory: adir", not "[Errno 21] Is a directory: 'adir'"
            message = f"{err.strerror}: {err.filename}" if err.filename is not None else err.strerror
        if isinstance(err, UnknownTaskError):  # the commands that take a task take --task-file too
            message += " (a task of your own is known from --task-file, or from a model trained with it)"
        text = escape(message)  # a path or text with brackets is not a style tag
        Console(stderr=True).print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)  # one line
        sys.exit(2)
