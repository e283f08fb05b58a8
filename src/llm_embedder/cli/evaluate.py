"""`evaluate`: retrieval metrics and the LLM's downstream quality for models and baselines."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import (
    MAX_COUNT,
    DeviceOption,
    TaskFileOption,
    check_cpu_only,
    check_max_length,
    register_task_files,
)


def parse_model_specs(specs: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` (named after the path); a ``{task}`` in PATH means one model per task."""
    models = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).name or spec, "", spec)
        if not name or not path:
            raise ValueError(f"--model expects NAME=PATH or PATH, got {spec!r}")
        if name in models:
            raise ValueError(f"--model name {name!r} given twice")
        models[name] = path
    return models


def register_models_tasks(paths: Iterable[str], tasks: Sequence[str]) -> None:
    """Register the user tasks the models carry (their ``llm_embedder_tasks.json``) without loading them, so that
    a task a model was trained with is known when the task names are checked. A path with ``{task}`` (one model
    per task) is read for each of ``tasks`` whose model folder exists; a missing model is left to fail where it
    loads, as before."""
    from llm_embedder.embedder import register_model_tasks

    for path in paths:
        if "{task}" not in path:
            register_model_tasks(path)
            continue
        for task in tasks:
            resolved = path.replace("{task}", task)
            if Path(resolved).is_dir():
                register_model_tasks(resolved)


def recorded_paths(specs: dict[str, str], base: str | None) -> dict[str, str]:
    """System -> its model's folder as a later call from another directory finds it: a path made absolute (a
    ``{task}`` template too), an alias (``minilm``) as it is."""
    from llm_embedder.models import EMBEDDER_ALIASES

    paths = dict(specs)
    if base:
        paths.update({"base (no instructions)": base, "base (instructions)": base})
    return {name: path if path in EMBEDDER_ALIASES else str(Path(path).absolute()) for name, path in paths.items()}


def parse_prompt_items(specs: list[str]) -> dict[str, int]:
    """``TASK=N`` (repeatable): N retrieved items in that task's LLM prompt instead of its default."""
    from llm_embedder.evaluate.run import check_prompt_items

    items: dict[str, int] = {}
    for spec in specs:
        task, _, count = spec.partition("=")
        if task in items:
            raise ValueError(f"--prompt-items gives {task} twice ({task}={items[task]}, then {spec}); give it once")
        try:
            items[task] = int(count)
        except ValueError:
            raise ValueError(f"--prompt-items {spec!r}: expected TASK=N with N a whole number") from None
    check_prompt_items(items, label="--prompt-items")
    return items


@app.command("evaluate")
def evaluate_command(
    data: Annotated[Path, typer.Option(help="Task-suite directory (DIR/<task>/test.jsonl, corpus.jsonl).")],
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="NAME=PATH of an embedder (repeatable).")
    ] = None,
    base: Annotated[str | None, typer.Option(
        help="Base embedder evaluated with and without instructions; none: no base rows.")] = "minilm",
    tasks: Annotated[list[str] | None, typer.Option("--task", help=(
        "Tasks to evaluate (default: every task with a <task>/<split>.jsonl in DIR, a user task among them; a user "
        "task is known from --task-file or from a --model or --base trained with it)."))] = None,
    llm: Annotated[str | None, typer.Option(help="LLM for downstream metrics: smollm2, a HF dir, none.")] = "smollm2",
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory for results.json, results.md, plots/.")
    ] = Path("runs/eval"),
    split: Annotated[str, typer.Option(help="Split to evaluate (tune on dev, report test).")] = "test",
    max_queries: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT, help="Evaluate at most this many queries per task.")] = None,
    max_llm_queries: Annotated[int | None, typer.Option(
        min=0, max=MAX_COUNT, help="At most this many queries per task to the LLM.")] = None,
    max_corpus: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT, help="Search all gold docs plus a fixed sample, this many.")] = None,
    max_candidates: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT, help="Per-query candidates kept: gold + most recent.")] = None,
    baselines: Annotated[bool, typer.Option(help="Include none/random/recency/BM25 baselines.")] = True,
    gold: Annotated[bool, typer.Option(
        help="Add a 'gold' row: the labelled items first, then BM25's (every labelled item found).")] = False,
    teacher: Annotated[bool, typer.Option(
        help="Add a 'teacher' row where a query has its own candidates (chat, lrlm): each scored alone by "
             "the LLM with the answer, best first (needs --llm).")] = False,
    generate: Annotated[bool, typer.Option(help="Also measure greedy-answer accuracy (qa; slower).")] = True,
    prompt_items: Annotated[list[str] | None, typer.Option(
        help="TASK=N: N retrieved items in that task's LLM prompt instead of its default (repeatable; qa 3, icl 8, "
             "chat 1, lrlm 2, a user task with answers 3).")] = None,
    device: DeviceOption = None,
    fast: Annotated[bool, typer.Option(
        help="CPU fast mode: bf16 Linear layers in the embedders and the LLM (approximate; for CPUs with "
             "AVX512-BF16 or AMX).")] = False,
    max_length: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT,
        help="Tokens every embedder keeps of a query or key (default: each model's saved length, the "
             "training length for a model llm-embedder train wrote).")] = None,
    task_file: TaskFileOption = None,
) -> None:
    """Evaluate embedders and baselines on the task suite; writes JSON, a markdown table and PNG plots."""
    from rich.console import Console

    from llm_embedder.evaluate import run_evaluation, write_report
    from llm_embedder.evaluate.rankers import dense_systems
    from llm_embedder.evaluate.run import PER_QUERY_FILE, RESULTS_FILE, SETTINGS_FILE, system_versions
    from llm_embedder.io import check_output_dir
    from llm_embedder.models import check_device
    from llm_embedder.tasks import UnknownTaskError, get_task

    check_device(device)  # before the baselines run: embedders are built lazily
    if fast:  # likewise (the embedders refused it naming their parameter, fast='bf16', once they were built)
        check_cpu_only(device, "--fast", "on CUDA the embedders run in fp16 and the LLM in bf16 already")
    # a folder of other files (a task's data, a model) is refused: results, plots and caches would land among them
    check_output_dir(out, (RESULTS_FILE, SETTINGS_FILE, PER_QUERY_FILE, "results.md", "plots"), "evaluation results")
    if data.is_file():
        raise NotADirectoryError(f"--data {data} is a file; give the suite's folder (it holds <task>/{split}.jsonl)")
    if not data.is_dir():
        raise FileNotFoundError(f"data directory not found: {data}")
    task_names = tasks or sorted(p.name for p in data.iterdir() if (p / f"{split}.jsonl").exists())
    if not task_names:
        raise FileNotFoundError(f"no <task>/{split}.jsonl under {data}")
    specs = parse_model_specs(model or [])
    if base is not None and base.strip().lower() in ("", "none"):
        base = None  # as --llm none
    if not specs and not base and not baselines and not gold and not teacher:
        raise ValueError("nothing to evaluate: --base none and --no-baselines leave no rows; give --model NAME=PATH, "
                         "a --base, or drop --no-baselines")
    # the user tasks of a task file and those the models carry (trained with --task-file) are known before the
    # task names are checked, as encode, index, search and serve know them
    register_task_files(task_file)
    register_models_tasks([*specs.values(), *([base] if base else [])], task_names)
    for name in task_names:
        try:
            get_task(name)
        except UnknownTaskError as err:
            raise ValueError(f"{err} (a user task is known from --task-file, or from a --model or --base trained "
                             "with it)") from None
    items = parse_prompt_items(prompt_items or [])
    for path in [*specs.values(), *([base] if base else [])]:  # beyond a model's positions: named by the option here
        try:
            check_max_length(path.replace("{task}", task_names[0]), max_length)
        except FileNotFoundError:  # a missing model is left to fail where it loads
            pass
    embed_fast = "bf16" if fast else None
    systems = dense_systems(specs, base, device, fast=embed_fast, max_length=max_length)
    if teacher and (not llm or llm == "none"):
        raise ValueError("--teacher ranks candidates with the LLM: give --llm")
    if items and (not llm or llm == "none"):
        raise ValueError("--prompt-items sets what the LLM's prompt holds, and --llm none gives no LLM: give --llm")
    load_lm = None
    if llm and llm != "none":
        def load_lm():  # once run_evaluation has checked every task's split and corpus: a bad one fails in seconds
            from llm_embedder.llm import CausalLM

            return CausalLM(llm, device=device, fast=embed_fast)
    results = run_evaluation(
        data, task_names, systems, out, load_lm=load_lm, baselines=baselines, gold=gold, teacher=teacher, split=split,
        max_queries=max_queries, max_llm_queries=max_llm_queries, max_corpus=max_corpus, max_candidates=max_candidates,
        generate=generate, prompt_items=items, embed_fast=embed_fast, embed_max_length=max_length,
        versions=system_versions(specs, base, task_names), model_paths=recorded_paths(specs, base),
    )
    plots = write_report(results, out)
    console = Console(markup=False)  # system names and paths are text, not style tags
    console.print((out / "results.md").read_text(encoding="utf-8").split("###")[0], soft_wrap=True, highlight=False)
    console.print(f"results: {out / 'results.json'}, {out / 'results.md'}; plots: " + ", ".join(map(str, plots)),
                  soft_wrap=True)
