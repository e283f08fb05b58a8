"""`data build`, `data check` and `data import`: build the offline task suite, validate task data files, convert
the paper's own data formats (FlagEmbedding, BEIR, MMLU, PopQA) into task data."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import TaskFileOption, check_choice, refuse_existing, register_task_files

data_app = typer.Typer(
    help="Build the offline six-task suite from installed packages, validate task data files, and import the "
    "paper's own data formats.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("build")
def build_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: <task>/{train,dev,test}.jsonl, and corpus.jsonl "
                           "for qa, icl, tool and convsearch.")
    ] = Path("data/suite"),
    size: Annotated[str, typer.Option(help="small (~200/50/100 records per task, < 1 min) or full (all sources).")] = (
        "small"
    ),
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    task: Annotated[
        list[str] | None, typer.Option("--task", "-t", help="Build only this task (repeatable); default: all six.")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Rebuild every task even if an earlier build finished it.")
    ] = False,
) -> None:
    """Build train/dev/test (and corpus) JSONL for qa, icl, chat, lrlm, tool and convsearch, plus a data card.

    An interrupted build resumes: tasks already finished with the same size and seed are kept.
    """
    from llm_embedder.data.common import SIZES
    from llm_embedder.data.suite import build_suite

    check_choice("--size", size, SIZES)
    console = Console()
    start = time.perf_counter()

    def progress(name: str, status: str) -> None:
        console.print(f"[bold]{name}[/]: {status}  [dim]({time.perf_counter() - start:.1f} s)[/]", highlight=False,
                      soft_wrap=True)  # a log's line is not cut at 80 columns

    with console.status("building the task suite..."):
        manifest = build_suite(out, size=size, seed=seed, tasks=task, resume=not fresh, progress=progress)
    table = Table(title=f"task suite in {escape(str(out))} (size={size}, seed={seed})")
    for column in ("task", "train", "dev", "test", "corpus"):
        table.add_column(column, justify="right" if column != "task" else "left")
    for name, entry in manifest["tasks"].items():
        counts = entry["counts"]
        table.add_row(name, *(f"{counts[k]:,}" if k in counts else "-" for k in ("train", "dev", "test", "corpus")))
    console.print(table)
    console.print(f"data card: {out / 'DATA_CARD.md'}; manifest: {out / 'manifest.json'}; "
                  f"{time.perf_counter() - start:.1f} s", highlight=False, markup=False, soft_wrap=True)


@data_app.command("check")
def check_command(
    files: Annotated[
        list[Path], typer.Argument(help="Task data JSONL files (a corpus*.jsonl is checked as a corpus, any other "
                                   "but dev*/test*.jsonl also as train reads it: one task, a positive where it "
                                   "selects one).")
    ],
    corpus: Annotated[
        Path | None, typer.Option(help="Corpus for the index range check (default: a corpus.jsonl next to each file).")
    ] = None,
    task_file: TaskFileOption = None,
) -> None:
    """Validate task data files: print file:line:field for each problem and exit 1, else a per-task summary."""
    from llm_embedder.data.validate import (
        as_evaluation_record,
        corpus_size_of,
        folder_task,
        is_corpus_path,
        summarise,
        validate_file,
    )
    from llm_embedder.io import iter_jsonl, require_file

    register_task_files(task_file)  # records of a task defined there are checked against it
    console = Console(markup=False)  # file paths are text, not style tags
    corpus_size = corpus_size_of(corpus, "--corpus") if corpus is not None else None
    table = Table(title="valid task data")
    for column in ("file", "task", "records", "avg pos", "avg neg", "avg history", "teacher scores"):
        table.add_column(column, overflow="fold")
    n_problems = 0
    for path in files:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory, expected a JSONL file{folder_hint(path)}")
        require_file(path)
        # a file that is no evaluation split is checked as train reads it (one task, a positive where it selects one)
        evaluation = path.name.startswith(("dev", "test"))  # checked as evaluate reads it, the others as train
        problems = validate_file(path, corpus_size, training=not evaluation, evaluation=evaluation)
        for problem in problems:
            console.print(str(problem), highlight=False, markup=False, soft_wrap=True)
        n_problems += len(problems)
        if problems:
            continue
        if is_corpus_path(path):
            table.add_row(str(path), "(corpus)", f"{corpus_size_of(path):,}", "", "", "", "")
            continue
        task = folder_task(path)
        records = (as_evaluation_record(record, line, task) if evaluation else record
                   for line, record in iter_jsonl(path))
        for name, stats in summarise(records).items():
            table.add_row(
                str(path), name, f"{stats['records']:,}", f"{stats['avg_pos']:.2f}", f"{stats['avg_neg']:.2f}",
                f"{stats['avg_history']:.2f}", stats["has_scores"],
            )
    if table.row_count:
        console.print(table)
    if n_problems:
        Console(stderr=True).print(f"[bold red]{n_problems} problem(s) found[/]")
        raise typer.Exit(1)


IMPORT_FORMATS = ("flag", "beir", "mmlu", "popqa")


@data_app.command("import")
def import_command(
    source: Annotated[
        Path, typer.Argument(help="flag: a FlagEmbedding JSONL file; beir: a BEIR folder (corpus.jsonl, queries.jsonl, "
                             "qrels/<split>.tsv); mmlu: a JSONL file, a <subject>_test.csv or a folder of them; popqa: "
                             "popQA.tsv, a CSV with its header, or JSONL.")
    ],
    fmt: Annotated[str, typer.Option("--format", "-f", help="flag, beir, mmlu or popqa.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL of task records (name an evaluation file "
                                      "dev*/test*.jsonl: `data check` then checks it as evaluation data).")],
    corpus: Annotated[
        Path | None, typer.Option(help="flag: the corpus JSONL that pos_index/neg_index point into.")
    ] = None,
    corpus_out: Annotated[
        Path | None, typer.Option(help="beir, flag with --corpus: where to write the corpus (default: corpus.jsonl "
                                  "beside --out, where evaluate and data check look for it).")
    ] = None,
    split: Annotated[str, typer.Option(
        help="beir: the qrels split, qrels/<split>.tsv; mmlu, a folder: its <subject>_<split>.csv files.")] = "test",
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="Task of the records (default: qa; flag: the file's own).")
    ] = None,
    key_template: Annotated[
        str, typer.Option(help="flag and beir: how a corpus entry becomes key text.")
    ] = "{title} {text}",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out (and corpus).")] = False,
    task_file: TaskFileOption = None,
) -> None:
    """Convert FlagEmbedding JSONL, a BEIR folder, MMLU or PopQA questions into validated task records (JSONL).

    mmlu and popqa give qa evaluation records (query, answers; choices, subject, prop_id kept); beir, and flag with
    --corpus, also write the corpus beside --out (unless it is there already). Nothing is written unless every
    record is valid.
    """
    from llm_embedder.data.loaders import (
        load_beir,
        load_corpus,
        load_flag_jsonl,
        load_mmlu,
        load_popqa,
        mmlu_files,
    )
    from llm_embedder.io import check_output_file, write_jsonl
    from llm_embedder.progress import count_progress

    check_choice("--format", fmt, IMPORT_FORMATS)
    for option, value in (("--corpus", corpus if fmt != "flag" else None),
                          ("--corpus-out", corpus_out if fmt not in ("beir", "flag") else None)):
        if value is not None:
            raise ValueError(f"{option} does not apply to --format {fmt}")
    if fmt == "flag" and corpus_out is not None and corpus is None:
        raise ValueError("--corpus-out writes the --corpus the records point into: give --corpus")
    register_task_files(task_file)
    inputs = [source] + ([corpus] if corpus is not None else [])
    if fmt == "beir":  # its files, not the folder, are read (--out beside them must not replace them)
        inputs += [source / "corpus.jsonl", source / "queries.jsonl", source / "qrels" / f"{split}.tsv"]
    if fmt == "mmlu" and source.is_dir():  # likewise the CSV files of a folder
        inputs += mmlu_files(source, split)
    outputs = [("--out", out)]
    # the corpus goes beside the records, where evaluate and data check look for it (without it evaluate ranks each
    # query among its own texts); a flag --corpus already there is not written again
    corpus_target = corpus_out or out.parent / "corpus.jsonl"
    if fmt == "beir" or (fmt == "flag" and corpus is not None and corpus_target.resolve() != corpus.resolve()):
        outputs.append(("--corpus-out", corpus_target))
    for option, path in outputs:
        check_output_file(path, option, inputs)
        refuse_existing(path, overwrite, option)
    if len(outputs) == 2 and outputs[0][1].resolve() == outputs[1][1].resolve():
        raise ValueError(f"--out and --corpus-out are both {out}")
    # the files read, as the loader reads them: a flag --corpus that is written too is read again for that
    read = [p for p in inputs if p.is_file()] + ([corpus] if fmt == "flag" and len(outputs) == 2 else [])
    corpus_records = None
    console = Console(markup=False, highlight=False)
    # bytes read, then records written, on stderr as index's and encode's bars (plain lines in a log)
    with count_progress(log_start=True) as bar:
        total = sum(p.stat().st_size for p in read if p.is_file())  # a missing one is the loader's to name
        reading = bar.add_task(f"reading {source.name} ({fmt}, bytes)", total=total)
        unshown = 0

        def on_read(size: int) -> None:  # the bar moves a megabyte at a time: a line at a time cost seconds a GB
            nonlocal unshown
            unshown += size
            if unshown >= 1 << 20:
                bar.advance(reading, unshown)
                unshown = 0

        if fmt == "flag":
            records = load_flag_jsonl(source, corpus=corpus, key_template=key_template, task=task, on_read=on_read)
            if len(outputs) == 2:
                corpus_records = load_corpus(corpus, on_read=on_read)
        elif fmt == "beir":
            records, corpus_records = load_beir(source, split=split, task=task or "qa", key_template=key_template,
                                                on_read=on_read)
        elif fmt == "mmlu":
            records = load_mmlu(source, task=task or "qa", split=split, on_read=on_read)
        else:
            records = load_popqa(source, task=task or "qa", on_read=on_read)
        bar.update(reading, completed=total)  # the last part of a megabyte (and a BOM, which a CSV reader drops)
        written = [(out, records)] + ([(outputs[1][1], corpus_records)] if corpus_records is not None else [])
        for path, rows in written:
            writing = bar.add_task(f"writing {path.name}", total=len(rows))
            write_jsonl(path, counted(rows, lambda n, job=writing: bar.advance(job, n)))
            bar.update(writing, completed=len(rows))
    console.print(f"wrote {plural(len(records), 'record')} to {out}", soft_wrap=True)
    if corpus_records is not None:
        console.print(f"wrote {plural(len(corpus_records), 'corpus entry', 'corpus entries')} to {outputs[1][1]}",
                      soft_wrap=True)


def counted(rows: list, advance: Callable[[int], None], step: int = 10_000) -> Iterator:
    """``rows`` as they are, calling ``advance(n)`` every ``step`` of them (a progress bar's)."""
    for i, row in enumerate(rows, start=1):
        yield row
        if i % step == 0:
            advance(step)


def folder_hint(folder: Path, shown: int = 6) -> str:
    """For a folder given as a data file: the JSONL files it holds, as a pasteable hint (empty when none)."""
    names = sorted(p.name for p in folder.glob("*.jsonl") if p.is_file())
    if not names:
        if not any(p.is_file() for p in folder.glob("*/*.jsonl")):  # a whole suite holds <task>/train.jsonl ...
            return ""
        return f" (its task folders hold JSONL files: check them with `data check {folder}/*/*.jsonl`)"
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    return f" (it holds {listed}: check them with `data check {folder}/*.jsonl`)"


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 record``, ``2 records`` (``many``: the plural where it is not ``one`` + s), the count with thousands
    separators."""
    return f"{count:,} {one if count == 1 else many or one + 's'}"
