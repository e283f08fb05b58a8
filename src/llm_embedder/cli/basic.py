"""`tasks` and `encode`: look at the task registry, embed text from a file or stdin."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.table import Table

from llm_embedder.cli.app import app
from llm_embedder.io import DataError, blank_kind, decode_line, iter_text_lines, parse_jsonl_lines
from llm_embedder.train.config import MAX_COUNT  # every whole-number option's bound, as train.yaml's settings'

ModelOption = Annotated[str, typer.Option("--model", "-m", help="Sentence-transformers directory or alias (minilm).")]
TaskFileOption = Annotated[
    list[Path] | None, typer.Option("--task-file", help="YAML/JSON file of extra tasks to register first.")
]
# every command that runs a model takes --device, worded once (models.DEVICE_HINT names the same devices)
DEVICE_HELP = "cpu, cuda, cuda:N or mps (default: cuda if present, else cpu)."
DeviceOption = Annotated[str | None, typer.Option("--device", help=DEVICE_HELP)]
MaxLengthOption = Annotated[int | None, typer.Option(
    "--max-length", min=1, max=MAX_COUNT,
    help="Tokens of a query or key the model keeps (default: its saved length; 256 for minilm).")]


def check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    """Refuse a value not among ``choices`` naming the option, before the library refuses it naming its parameter
    (``--size must be one of small, full, got 'medium'``, not ``size must be one of ('small', 'full')``)."""
    if value not in choices:
        allowed = choices[0] if len(choices) == 1 else f"one of {', '.join(choices)}"
        raise ValueError(f"{option} must be {allowed}, got {value!r}")


def check_cpu_only(device: str | None, option: str, why: str) -> None:
    """Refuse an option for the CPU alone (a fast mode) where the models will run elsewhere: --device, or CUDA
    where this machine has it. ``why`` says what that device does instead."""
    import torch

    from llm_embedder.models import check_device

    kind = torch.device(check_device(device) or ("cuda" if torch.cuda.is_available() else "cpu")).type
    if kind != "cpu":
        where = f"not --device {device}" if device else "and without --device this machine's CUDA is used"
        raise ValueError(f"{option} is for CPU, {where} ({why}): drop {option}, or give --device cpu")


def check_max_length(model: str, max_length: int | None) -> None:
    """Refuse a --max-length beyond the model's positions before it loads (the model would name its parameter,
    query_max_length, once loaded)."""
    if max_length is not None:
        from llm_embedder.models import check_max_lengths

        check_max_lengths(model, {"--max-length": max_length})


def refuse_existing(out: Path, overwrite: bool, option: str = "--out") -> None:
    """Refuse to replace an existing output file unless ``--overwrite`` is given (as `data import` does)."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{option} {out} exists; give --overwrite to replace it")


def register_task_files(task_files: list[Path] | None) -> None:
    from llm_embedder.tasks import register_tasks_from_file

    for path in task_files or []:
        register_tasks_from_file(path)


@app.command("tasks")
def tasks_command(task_file: TaskFileOption = None) -> None:
    """List the registered tasks with their scenario, instructions and loss."""
    from llm_embedder.tasks import get_task, list_tasks

    register_task_files(task_file)
    table = Table(title="llm-embedder tasks")
    for column in ("task", "scenario", "query instruction", "key instruction", "loss"):
        table.add_column(column)
    for name in list_tasks():
        task = get_task(name)
        table.add_row(name, task.scenario, repr(task.query_instruction), repr(task.key_instruction), task.loss)
    Console(markup=False).print(table)  # user task names and instructions are text, not style tags


def read_texts(source: Path | None, field: str | None, noun: str = "text", use: str = "encode",
               lines_only: bool = False) -> list[str]:
    """Text lines, or one field of JSONL records, from a file or stdin ('-' or no file). ``noun`` and ``use`` word
    the messages ("one text per line", "no texts to encode"); ``lines_only``: a .jsonl file is read as lines too.
    A blank line among the texts is refused (it would be encoded as the instruction alone); blank lines at the end
    are left out."""
    plural = "queries" if noun == "query" else f"{noun}s"
    name = "<stdin>" if source is None or str(source) == "-" else str(source)
    if name == "<stdin>":  # bytes, decoded per line: bad UTF-8 names its line
        raw_lines = getattr(sys.stdin, "buffer", None) or (line.encode() for line in sys.stdin)
        lines = [decode_line(raw, name, n).rstrip("\r\n") for n, raw in enumerate(raw_lines, start=1)]
    else:
        if not Path(name).exists():
            raise FileNotFoundError(f"input file not found: {name}")
        lines = list(iter_text_lines(name))  # bad UTF-8 names the file and line
    if field is None and (lines_only or not name.endswith(".jsonl")):
        while lines and not lines[-1].strip():  # blank lines at the end (an editor's last newline) hold no text
            lines.pop()
        for line_no, line in enumerate(lines, start=1):
            if not line.strip():  # a vector per line: a blank line is refused, not encoded as the instruction alone
                what = "line of only whitespace" if line else "empty line"
                raise DataError(f"{name}:{line_no}: {what} (one {noun} per line)")
        texts = lines
    else:
        field = field or "text"
        texts = []
        for line_no, record in parse_jsonl_lines(lines, name):
            if field not in record:
                raise DataError(f"{name}:{line_no}: missing field {field!r}")
            if not isinstance(record[field], str):
                raise DataError(f"{name}:{line_no}: field {field!r} must be a string")
            if what := blank_kind(record[field]):
                raise DataError(f"{name}:{line_no}: field {field!r} {what}")
            texts.append(record[field])
    if not texts:
        raise DataError(f"{name}: no {plural} to {use}")
    return texts


@app.command("encode")
def encode_command(
    input: Annotated[Path | None, typer.Argument(
        help="Text lines, or JSONL for a .jsonl file or with --field; '-' or nothing reads stdin.")] = None,
    task: Annotated[str, typer.Option(help="Task whose instruction is applied.")] = "qa",
    role: Annotated[str, typer.Option(help="query or key.")] = "query",
    model: ModelOption = "minilm",
    field: Annotated[str | None, typer.Option(help="JSONL field holding the text (default 'text').")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="OUT.npy or OUT.jsonl; JSONL to stdout if absent.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=MAX_COUNT, help="Texts per model batch.")] = 64,
    device: DeviceOption = None,
    max_length: MaxLengthOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    task_file: TaskFileOption = None,
) -> None:
    """Embed texts for a task and role; writes a .npy matrix or JSONL lines with an `embedding` field."""
    import numpy as np

    from llm_embedder.embedder import Embedder, register_model_tasks
    from llm_embedder.io import atomic_write, check_output_file
    from llm_embedder.tasks import ROLES, get_task

    register_task_files(task_file)
    register_model_tasks(model)  # a task the model was trained with is known before the model loads
    get_task(task)  # fail fast on a bad task or role, before loading the model
    check_choice("--role", role, ROLES)
    check_max_length(model, max_length)
    if out is not None and out.suffix not in (".npy", ".jsonl"):
        raise ValueError(f"--out must end in .npy or .jsonl, got {out}")
    if out is not None:  # before the model loads
        check_output_file(out, inputs=[input] if input is not None else [])
        refuse_existing(out, overwrite)
    texts = read_texts(input, field)
    embedder = Embedder(model, device=device, batch_size=batch_size, query_max_length=max_length,
                        key_max_length=max_length)
    vectors = encode_with_progress(embedder, texts, task, role, batch_size)
    if out is None:
        write_embedding_lines(sys.stdout, texts, vectors)
        return
    # through a temp file renamed over --out: a killed run leaves no truncated file and keeps an earlier output
    with atomic_write(out, "wb" if out.suffix == ".npy" else "w") as handle:
        if out.suffix == ".npy":
            np.save(handle, vectors)
        else:
            write_embedding_lines(handle, texts, vectors)
    Console(stderr=True, markup=False).print(f"wrote {len(texts)} x {embedder.dim} vectors to {out}", soft_wrap=True)


def encode_with_progress(embedder: Any, texts: list[str], task: str, role: str, batch_size: int) -> Any:
    """``embedder.encode`` a few batches at a time, under the project's bar on stderr (plain lines in a log), as
    index, score and train show theirs: sentence-transformers' own bar showed from 512 texts only, and wrote its
    carriage returns into logs."""
    import numpy as np

    from llm_embedder.progress import count_progress

    step = batch_size * 4  # each call still sorts its texts by length, as one call over all would
    parts = []
    with count_progress(log_start=True) as bar:  # on stderr
        job = bar.add_task(f"encoding {task} {'queries' if role == 'query' else 'keys'}", total=len(texts))
        for lo in range(0, len(texts), step):
            parts.append(embedder.encode(texts[lo:lo + step], task, role, show_progress=False))
            bar.update(job, completed=min(lo + step, len(texts)))
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)


def write_embedding_lines(handle: TextIO, texts: list[str], vectors: Sequence[Sequence[float]]) -> None:
    """One JSON line per text: the text and its embedding (7 decimals)."""
    for text, vector in zip(texts, vectors, strict=True):
        handle.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vector]}) + "\n")
