"""`demo`: the README's main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llm_embedder.cli.app import app
from llm_embedder.cli.basic import check_choice


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Run directory (data, scores, models, eval); re-runs resume.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="A smaller run (under 5 minutes on 2 CPU cores).")] = False,
    base: Annotated[str, typer.Option(help="Base embedder to fine-tune.")] = "minilm",
    llm: Annotated[str, typer.Option(help="LLM that gives the reward and the downstream metrics.")] = "smollm2",
    split: Annotated[str, typer.Option(help="Evaluation split: test (the report) or dev (for tuning).")] = "test",
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a run setting, e.g. --set lr=5e-5 --set epochs=2 (see pipeline.json)."),
    ] = None,
    search_only: Annotated[bool, typer.Option(help="Only search the bundled mini corpus with --base.")] = False,
) -> None:
    """Reproduce the paper's claim: build data, score with the LLM, train unified and task-specific
    embedders, evaluate them against the base model and baselines; then show the unified model's hits."""
    from llm_embedder.demo import run_demo
    from llm_embedder.pipeline import PipelineConfig, run_pipeline

    check_choice("--split", split, ("test", "dev"))
    if search_only:
        given = {"--out": out != Path("runs/demo"), "--quick": quick, "--llm": llm != "smollm2",
                 "--split": split != "test", "--set": bool(setting)}
        ignored = [option for option, was_given in given.items() if was_given]
        if ignored:  # they used to be ignored silently
            raise ValueError(f"--search-only searches the bundled mini corpus with --base and runs nothing else: "
                             f"{', '.join(ignored)} would have no effect")
        run_demo(model=base)
        return
    overrides = {"split": split}
    for item in setting or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    cfg = PipelineConfig.preset(quick).with_overrides(overrides)
    run_pipeline(out, base=base, llm=llm, cfg=cfg)
    run_demo(model=str(out / "models" / "unified"), k=2)
