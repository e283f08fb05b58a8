"""`score`: teacher scores (the LLM reward) for every candidate of every record in a JSONL file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import MAX_COUNT, DeviceOption, TaskFileOption, check_cpu_only, register_task_files
from llm_embedder.io import check_output_file, require_file


def _init_distributed() -> bool:
    """Join the torchrun process group (gloo: the job only needs barriers) when launched with WORLD_SIZE > 1."""
    import datetime as dt

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=dt.timedelta(hours=48))
        return True
    return False


def pick_fast_option(fast: bool | None, fast_mode: str | None) -> str | None:
    """The CausalLM fast mode that --fast and --fast-mode ask for (None: exact); a mode implies --fast."""
    from llm_embedder.llm.fast import FAST_MODES

    if fast_mode is None:
        return "auto" if fast else None
    if fast_mode not in FAST_MODES:
        raise ValueError(f"--fast-mode must be one of {', '.join(FAST_MODES)}; got {fast_mode!r}")
    if fast is False:
        raise ValueError("--fast-mode asks for the fast mode that --no-fast turns off; drop one of them")
    return fast_mode


@app.command("score")
def score_command(
    input: Annotated[Path, typer.Argument(help="Task records (JSONL): query, pos/neg or history, answers, task.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSONL: the records with teacher_scores.")],
    llm: Annotated[str, typer.Option(help="Causal LM: a Hugging Face directory or the alias smollm2.")] = "smollm2",
    batch_tokens: Annotated[
        int | None, typer.Option(min=1, max=MAX_COUNT,
                                 help="Padded tokens per forward pass (default 1024 on CPU, 16384 on CUDA).")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Task for records without a 'task' field.")] = None,
    task_file: TaskFileOption = None,
    rank_aware: Annotated[
        int, typer.Option(min=0, max=MAX_COUNT,
                          help="Rank-aware reward from N LLM samples per record (0: likelihood reward).")
    ] = 0,
    fast: Annotated[
        bool | None,
        typer.Option("--fast/--no-fast",
                     help="CPU fast mode (approximate scores; check with benchmarks/bench_reward.py --fast)."),
    ] = None,
    fast_mode: Annotated[
        str | None,
        typer.Option(help="The fast mode, and implies --fast: auto (bf16 where the CPU has it, else int8), bf16 or "
                          "int8 (--fast alone: auto)."),
    ] = None,
    key_max_tokens: Annotated[int | None, typer.Option(
        min=1, max=MAX_COUNT,
        help="Cut each candidate to this many tokens (the reference: 512; default: only where the prompt "
             "would overflow the LLM's window).")] = None,
    chunk_pairs: Annotated[
        int, typer.Option(min=1, max=MAX_COUNT, help="Pairs per resumable chunk (batches never cross a chunk).")
    ] = 256,
    device: DeviceOption = None,
    overwrite: Annotated[bool, typer.Option(help="Start afresh instead of resuming an existing OUT.")] = False,
    reuse: Annotated[
        list[Path] | None,
        typer.Option(help="An earlier OUT scored with the same LLM and settings: its records keep their scores "
                          "(repeatable)."),
    ] = None,
) -> None:
    """Score every candidate (pos then neg, or each history turn) by the LLM's mean log-prob of the answer.

    The prompt is the task's reward template (see `llm-embedder tasks`). Finished records are appended as
    they finish; rerunning the same command resumes. Under `torchrun --nproc_per_node N -m llm_embedder
    score ...` the records are split over the processes and merged in input order. Provenance goes to
    OUT.meta.json.
    """
    import torch

    from llm_embedder.llm import CausalLM
    from llm_embedder.reward import score_file
    from llm_embedder.reward.run import dist_info
    from llm_embedder.tasks import get_task

    register_task_files(task_file)
    if task is not None:
        get_task(task)  # a bad --task is the option's fault, not every record's
    option = "--fast-mode" if fast_mode is not None else "--fast"
    fast_mode = pick_fast_option(fast, fast_mode)
    if fast_mode is not None:  # before the records are read and the LLM loads (it refused only once loaded)
        check_cpu_only(device, option, "on CUDA the LLM already runs in bf16")
    if not input.exists():
        raise FileNotFoundError(f"input file not found: {input}")
    for path in reuse or []:  # a mistyped name would only be "not reused", after the LLM loads
        require_file(path, "--reuse")
    check_output_file(out, inputs=[input])
    distributed = _init_distributed()
    rank, _ = dist_info()
    if device is None and distributed and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        summary = score_file(  # the LLM loads once the records are checked: a bad one is refused in seconds
            input, out, lambda: CausalLM(llm, device=device, fast=fast_mode), batch_tokens=batch_tokens,
            default_task=task, rank_aware=rank_aware,
            key_max_tokens=key_max_tokens, chunk_pairs=chunk_pairs, overwrite=overwrite, reuse=reuse,
        )
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    if rank == 0:
        done = "already complete" if summary.get("already_complete") else f"{summary['seconds']} s"
        Console(stderr=True).print(
            f"scored {summary['scored']} records ({summary['pairs']} candidates) -> {out} [{done}]; "
            f"skipped {summary['skipped_no_candidates']} without candidates; "
            f"{summary['truncated_prompts']} prompts truncated on the candidate side"
            + (f"; {summary['reused']} records took their scores from --reuse" if summary.get("reused") else "")
            + "".join(f"; not reused: {why}" for why in summary.get("reuse_skipped", [])),
            highlight=False, markup=False, soft_wrap=True,  # "[already complete]" is text, not a style tag
        )
