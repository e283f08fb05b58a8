"""`train` and `mine`: fine-tune the unified embedder on task data; mine hard negatives for a task file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import DeviceOption, TaskFileOption, refuse_existing, register_task_files
from llm_embedder.train.config import MAX_COUNT, MAX_SEED


@app.command("train")
def train_command(
    files: Annotated[list[Path] | None, typer.Argument(help="More training files/dirs (so `--data A B C` works).",
                                                       show_default=False)] = None,
    data: Annotated[list[Path] | None, typer.Option("--data", help="Training JSONL files, or dirs holding "
                                                    "<task>/train.jsonl. A file given twice is up-weighted.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output dir: model, card, checkpoints/.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base model dir or alias (default minilm).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="train.yaml; keys mirror these options.")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, max=MAX_COUNT,
                                                  help="Optimizer steps (default 10000).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, max=MAX_COUNT,
                                                   help="Queries per process (default 100).")] = None,
    group_size: Annotated[int | None, typer.Option("--group-size", min=2, max=MAX_COUNT,
                                                   help="Keys per query: 1 pos + negs (8).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default 5e-6, the paper's).")] = None,
    temperature: Annotated[float | None, typer.Option(
        "--temperature", help="τ of every loss (default 0.01, the paper's, for bge; the demo trains MiniLM at "
        "0.05, chosen on the dev split).")] = None,
    query_max_length: Annotated[int | None, typer.Option("--query-max-length", min=1, max=MAX_COUNT,
                                                         help="Query tokens (256).")] = None,
    key_max_length: Annotated[int | None, typer.Option("--key-max-length", min=1, max=MAX_COUNT,
                                                       help="Key tokens (256).")] = None,
    save_steps: Annotated[int | None, typer.Option("--save-steps", min=1, max=MAX_COUNT,
                                                   help="Checkpoint every N steps (1000).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED,
                                             help="Seed for sampling and selection (42).")] = None,
    self_paced: Annotated[bool | None, typer.Option("--self-paced/--no-self-paced",
                                                    help="Per-task lr scaling L_T0/L_T (2024 revision).")] = None,
    cpu_bf16: Annotated[bool | None, typer.Option("--cpu-bf16/--no-cpu-bf16",
                                                  help="bf16 mixed precision on a CPU with bf16 matmuls "
                                                  "(AVX512-BF16/AMX): ~1.6x faster steps.")] = None,
    task_file: Annotated[list[Path] | None, typer.Option("--task-file", help="Extra task definitions.")] = None,
    device: DeviceOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in OUT.")] = False,
    instructions: Annotated[bool | None, typer.Option("--instructions/--no-instructions",
                                                      help="Ablation (--no-instructions): train every task "
                                                      "without instruction prefixes; the model saves empty "
                                                      "prompts.")] = None,
    plain_task: Annotated[list[str] | None, typer.Option("--plain-task",
                                                         help="Train this task without its instructions; the "
                                                         "model saves empty prompts for it (repeatable).")] = None,
    homogeneous: Annotated[bool | None, typer.Option("--homogeneous/--no-homogeneous",
                                                     help="Ablation (--no-homogeneous): mix tasks within a "
                                                     "batch (one process).")] = None,
    interleave_tasks: Annotated[bool | None, typer.Option("--interleave-tasks/--no-interleave-tasks",
                                                          help="Spread each dataset's batches evenly over every "
                                                          "epoch (default), or shuffle all batches.")] = None,
    hard_labels: Annotated[bool | None, typer.Option("--hard-labels/--no-hard-labels",
                                                     help="Ablation: ignore teacher scores; contrastive on the "
                                                     "labelled positive.")] = None,
    loss_override: Annotated[list[str] | None, typer.Option("--loss-override",
                                                            help="TASK=LOSS, e.g. qa=kl_distill (repeatable).")] = None,
    base_mix: Annotated[float | None, typer.Option("--base-mix", min=0,
                                                   help="Share of the starting model's weights in the saved model "
                                                   "(0: the trained weights; the demo uses 0.25).")] = None,
) -> None:
    """Train one embedder for all tasks: homogeneous batches, each task's loss and instructions (recipe §2).

    Runs under `torchrun --nproc_per_node N -m llm_embedder train ...` for several processes (gloo on CPU).
    All data is validated before training starts.
    """
    from llm_embedder.train.config import TrainConfig, parse_loss_override
    from llm_embedder.train.trainer import CONFIG_FILE, train

    given = dict(  # the command line's settings (None: not given), to be named by their options when refused
        data=[str(p) for p in [*(data or []), *(files or [])]] or None, out=str(out) if out else None,
        base=base, max_steps=max_steps,
        batch_size=batch_size, group_size=group_size, lr=lr, temperature=temperature, query_max_length=query_max_length,
        key_max_length=key_max_length, save_steps=save_steps, seed=seed, self_paced=self_paced, cpu_bf16=cpu_bf16,
        task_files=[str(p) for p in task_file] if task_file else None, device=device, resume=resume or None,
        instructions=instructions, plain_tasks=plain_task or None, homogeneous=homogeneous,
        interleave_tasks=interleave_tasks, hard_labels=hard_labels,
        loss_override=parse_loss_override(loss_override, "--loss-override") if loss_override else None,
        base_mix=base_mix,
    )
    check_given_settings(given)
    cfg = TrainConfig.from_sources(config, **given)
    check_given_tasks(cfg, plain_task or [], list(given["loss_override"] or {}))
    lengths = {option_of(name): given[name] for name in ("query_max_length", "key_max_length") if given[name]}
    if lengths:  # beyond the base model's positions: named by the option here, by the setting in train.yaml
        from llm_embedder.models import check_max_lengths

        check_max_lengths(cfg.base, lengths)
    config_file = Path(cfg.out) / CONFIG_FILE  # written with the final model

    def written() -> int | None:
        return config_file.stat().st_mtime_ns if config_file.is_file() else None

    before = written()
    result = train(cfg)
    if written() not in (None, before):  # a --resume of a finished run writes nothing, and says so above
        typer.echo(f"trained model: {result}")


def option_of(setting: str) -> str:
    """The train option that gives a TrainConfig setting: ``lr`` -> ``--lr``, ``plain_tasks`` -> ``--plain-task``."""
    from llm_embedder.train.config import OPTION_NAMES

    options = {name: option for option, name in OPTION_NAMES.items()}
    return "--" + options.get(setting, setting).replace("_", "-")


def check_given_settings(given: dict) -> None:
    """Check the settings given on the command line as TrainConfig would, naming the option (``--lr: must be
    greater than 0, got 0.0``), not the setting (``lr: ...``, as a train.yaml key is named with its file)."""
    from llm_embedder.train.config import check_value

    for name, value in given.items():
        if value is not None:
            try:
                check_value(name, value)
            except ValueError as err:
                raise ValueError(f"{option_of(name)}: {err}") from None
    if given["self_paced"] and given["homogeneous"] is False:
        raise ValueError("--self-paced needs homogeneous batches (one task per step); drop --no-homogeneous")


def check_given_tasks(cfg, plain_tasks: list[str], overridden: list[str]) -> None:
    """Refuse an unknown task that --plain-task or --loss-override names, naming the option (the trainer names
    the setting, for a train.yaml); the task files are registered first, as the trainer does."""
    if not plain_tasks and not overridden:
        return
    from llm_embedder.tasks import UnknownTaskError, get_task, register_tasks_from_file

    for path in cfg.task_files:
        register_tasks_from_file(path)
    for option, tasks in (("--plain-task", plain_tasks), ("--loss-override", overridden)):
        for task in tasks:
            try:
                get_task(task)
            except UnknownTaskError as err:
                raise ValueError(f"{option}: {err}") from None


@app.command("mine")
def mine_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Embedder dir or alias used to retrieve.")],
    data: Annotated[Path, typer.Option("--data", help="Task JSONL file (query, query_id, pos, task ...), checked "
                                       "as `data check` checks it; no chat (history) records.")],
    corpus: Annotated[Path, typer.Option("--corpus", help="Corpus JSONL ({text} or {title,text} or {contents}).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL with mined `neg`.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=MAX_COUNT, help="Negatives kept per query (100).")] = 100,
    filter_answers: Annotated[bool, typer.Option("--filter-answers", help="Drop answer-bearing passages.")] = False,
    key_template: Annotated[str | None, typer.Option("--key-template", help="e.g. '{title} {text}'.")] = None,
    device: DeviceOption = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
    task_file: TaskFileOption = None,
) -> None:
    """Mine hard negatives with a dense retriever, excluding positives (and optionally answer-bearing passages)."""
    from llm_embedder.io import check_output_file
    from llm_embedder.train.mine import mine_negatives

    check_output_file(out, inputs=[data, corpus])  # a folder or an input is named as such, not as "exists"
    refuse_existing(out, overwrite)  # before the model loads
    register_task_files(task_file)  # a custom task's records can be mined (a model's own tasks: mine_negatives)
    count = mine_negatives(model, data, corpus, out, top_k=top_k, filter_answers=filter_answers,
                           key_template=key_template, device=device)
    typer.echo(f"wrote {count} records with mined negatives to {out}")
