"""`ablate`: the paper's ablations on a demo run, in the evaluation table format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import check_choice


@app.command("ablate")
def ablate_command(
    run: Annotated[Path, typer.Option("--run", help="Demo run directory (made by `llm-embedder demo`); one "
                                      "without a demo run is an error unless --quick.")] = Path("runs/demo"),
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output dir (default RUN/ablations).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="If RUN holds no demo run yet, make the quick one "
                                        "there first (under 5 minutes on 2 CPU cores).")] = False,
    base: Annotated[str, typer.Option(help="Base embedder, only used if --quick makes the demo run.")] = "minilm",
    llm: Annotated[str, typer.Option(help="LLM for the downstream metrics (the demo's).")] = "smollm2",
    split: Annotated[str, typer.Option(help="Evaluation split: test, or dev for tuning (default out "
                                       "RUN/ablations-dev).")] = "test",
) -> None:
    """Train the unified embedder of a demo run again with one ingredient removed each (LLM reward,
    instructions, homogeneous batching, stabilized distillation) and evaluate the variants beside it.

    RUN must hold a finished demo run (`llm-embedder demo --out RUN`), unless --quick makes the quick one there.
    Writes RUN/ablations/results.json, results.md and plots/; re-runs resume.
    """
    from llm_embedder.ablations import run_ablations

    check_choice("--split", split, ("test", "dev"))
    run_ablations(run, out, quick=quick, base=base, llm=llm, split=split)
