"""The paper's ablations on a demo run: what each ingredient of the unified embedder is worth (recipe §4).

``run_ablations`` reads a finished ``make demo`` run directory (``pipeline.json``, the training files under
``train/``, ``models/unified/train_config.json``) and trains four variants of the unified model with the same
data, steps, batch size and learning rate, each with one ingredient removed:

- ``w/o LLM reward``: hard labels (``hard_labels``): teacher scores ignored, contrastive loss on the labelled
  positive (for chat, the first labelled turn); records without one (the demo's lrlm records) are dropped;
- ``w/o instructions``: plain text at training (``instructions=False``) and at evaluation;
- ``w/o homogeneous batching``: batches mix tasks, the loss is computed per task subgroup;
- ``plain KL (qa, icl)``: KL distillation instead of the stabilized distillation for qa and icl.

They are evaluated with the demo's evaluation settings beside the demo's unified model and the base model
into ``<run>/ablations/results.json``, ``results.md`` and ``plots/``. Results the demo already measured with
the same settings (unified, base) are copied from ``<run>/eval``. Re-running resumes: a variant already
trained on the same inputs is skipped, an interrupted one resumes from its checkpoint, and evaluation results
are cached per (task, system).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from llm_embedder.io import DataError, atomic_write, file_sha256

ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "w/o LLM reward": ("no-llm-reward", {"hard_labels": True}),
    "w/o instructions": ("no-instructions", {"instructions": False}),
    "w/o homogeneous batching": ("no-homogeneous", {"homogeneous": False}),
    "plain KL (qa, icl)": ("plain-kl", {"loss_override": {"qa": "kl_distill", "icl": "kl_distill"}}),
}
LEGACY_STAMP = "ablation_inputs.json"  # an ablated model's stamp before it shared the demo's (train.once)
SHARED_SYSTEMS = ("unified", "base (no instructions)", "base (instructions)")  # measured by the demo already


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline.json, the unified model's train_config.json) of a demo run, with clear errors."""
    paths = [run_dir / "pipeline.json", run_dir / "models" / "unified" / "train_config.json"]
    read = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `llm-embedder demo --out {run_dir}` first")
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not a demo run's JSON ({err}); run `llm-embedder demo --out {run_dir}` "
                            "again or use another --run") from None
        if not isinstance(value, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(value).__name__}")
        read.append(value)
    return read[0], read[1]


def locate_training_files(data: list[str], run_dir: Path) -> list[str]:
    """The unified model's training files, found in ``run_dir`` when the run was moved or copied since: its
    ``train_config.json`` names them as the demo was started (``runs/demo/train/<task>/...``, from its cwd)."""
    located = []
    for item in data:
        path, moved = Path(item), run_dir / "train" / Path(item).parent.name / Path(item).name
        located.append(item if path.is_file() or not moved.is_file() else str(moved))
    return located


def run_file_name(item: str) -> str:
    """A training file as it sits in its demo run (``train/<task>/<file>``), wherever the run is now."""
    path = Path(item)
    return f"train/{path.parent.name}/{path.name}"


def signature(settings: dict[str, Any]) -> dict[str, Any]:
    """What an ablated model depends on: its training settings and the content of its training files, each named as
    it sits in the run, so that a demo run moved or copied elsewhere keeps its ablated models."""
    digests = {}
    for item in settings["data"]:
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"training file of the demo run not found: {path}")
        digests[run_file_name(item)] = file_sha256(path)
    return {"settings": {**settings, "data": [run_file_name(item) for item in settings["data"]]},
            "data_sha256": digests}


def path_signature(settings: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The signature as stamped before it named files within the run: by the path the run was trained from.
    ``inputs``: ``signature(settings)`` when at hand (its digests are re-used, not computed again)."""
    digests = (inputs or signature(settings))["data_sha256"]
    return {"settings": settings, "data_sha256": {item: digests[run_file_name(item)] for item in settings["data"]}}


def train_ablation(out: Path, settings: dict[str, Any], console: Console) -> bool:
    """Train one variant unless done on the same inputs, resuming an interrupted one; True if it was trained."""
    from llm_embedder.train.config import TrainConfig
    from llm_embedder.train.once import TRAINED_STAMP, read_stamp, train_once
    from llm_embedder.train.trainer import train

    inputs = signature(settings)
    by_path = path_signature(settings, inputs)  # how a model trained in this same place was stamped before
    legacy = read_stamp(out / LEGACY_STAMP)  # before the ablations shared the demo's stamps (train.once)
    legacy_done = bool(legacy and legacy.get("done") and legacy.get("inputs") in (inputs, by_path)
                       and not (out / TRAINED_STAMP).exists())
    if legacy_done or read_stamp(out / TRAINED_STAMP) == by_path:  # trained on these inputs: keep it, restamped
        with atomic_write(out / TRAINED_STAMP) as handle:
            json.dump(inputs, handle)
    (out / LEGACY_STAMP).unlink(missing_ok=True)
    config = TrainConfig(**{**settings, "out": str(out)})
    return train_once(out, inputs, lambda resume: train(replace(config, resume=resume)), console)


def drop_stale_results(out: Path, pipeline_cfg: dict[str, Any]) -> bool:
    """Forget every cached result if the demo's settings (``pipeline.json``) changed since; True if so.

    The demo's split and its reference rows (gold, teacher) are left out: the ablations choose their own split,
    and none of these changes what they measure. A setting the stored copy lacks (added to the demo since) counts
    as its default."""
    from dataclasses import asdict

    from llm_embedder.evaluate.run import forget_systems
    from llm_embedder.pipeline import PipelineConfig

    pipeline_cfg = {key: value for key, value in pipeline_cfg.items() if key not in ("split", "gold", "teacher")}

    stamp = out / "pipeline.json"
    stale = False
    if stamp.is_file():
        stored, defaults = json.loads(stamp.read_text(encoding="utf-8")), asdict(PipelineConfig())
        stale = bool(set(stored) - set(pipeline_cfg)) or any(
            stored.get(key, defaults.get(key)) != value for key, value in pipeline_cfg.items()
        )
    if stale:
        forget_systems(out, (*SHARED_SYSTEMS, *ABLATIONS))
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(pipeline_cfg, indent=2), encoding="utf-8")
    return stale


def seed_shared_results(demo_eval: Path, out: Path) -> None:
    """Copy the demo's own results (metrics and per-query values) for the unified and base models into the
    ablation cache, with the settings they were measured under: the evaluation then keeps them only if it runs
    under the same ones (another LLM, split or query count measures every row anew). An ablation cache measured
    under other settings than the demo's gets nothing: its rows and the demo's would not compare."""
    from llm_embedder.evaluate.run import PER_QUERY_FILE, RESULTS_FILE, SETTINGS_FILE, load_results, save_results

    demo_settings, ours = demo_eval / SETTINGS_FILE, out / SETTINGS_FILE
    if not demo_settings.is_file():
        return
    measured = json.loads(demo_settings.read_text(encoding="utf-8"))
    if ours.is_file():
        try:
            if json.loads(ours.read_text(encoding="utf-8")) != measured:
                return
        except json.JSONDecodeError:
            return
    else:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(ours) as handle:
            json.dump(measured, handle, indent=2)
    for name in (RESULTS_FILE, PER_QUERY_FILE):
        demo = load_results(demo_eval, name) if demo_eval.is_dir() else {}
        results = load_results(out, name)
        for task, systems in demo.items():
            for system in SHARED_SYSTEMS:
                if system in systems:
                    results.setdefault(task, {})[system] = systems[system]
        save_results(out, results, name)


def systems_for(models: dict[str, tuple[Path, bool]], base: str, device: str | None = None,
                fast: str | None = None, max_length: int | None = None) -> dict:
    """name -> factory(task) -> DenseRanker; ``models`` maps name -> (dir, use instructions)."""
    from llm_embedder.evaluate.rankers import dense_systems

    plain = {name for name, (_, instructions) in models.items() if not instructions}
    return dense_systems({name: str(path) for name, (path, _) in models.items()}, base, device, plain=plain,
                         fast=fast, max_length=max_length)


def compare(results: dict[str, Any], per_query: dict[str, Any] | None = None) -> list[str]:
    """Per task: each ablation's main metric against the full unified model; with ``per_query``
    (``per_query.json``) also the paired per-query difference (ablation − unified) and its standard error."""
    from llm_embedder.evaluate import main_metric
    from llm_embedder.evaluate.run import per_query_gap

    lines = []
    for task, systems in results.items():
        metric, higher = main_metric(task)
        full = systems.get("unified", {}).get(metric)
        if full is None:
            continue
        parts = []
        for name in ABLATIONS:
            value = systems.get(name, {}).get(metric)
            if value is not None:
                worse = (value < full) if higher else (value > full)
                gap = per_query_gap(per_query, task, name, "unified")
                detail = "" if gap is None else f", per query {gap[0]:+.4f} ± {gap[1]:.4f}"
                parts.append(f"{name} {value:.4f} ({'worse' if worse else 'not worse'}{detail})")
        lines.append(f"{task} ({metric}): unified {full:.4f}; " + "; ".join(parts))
    return lines


def run_ablations(run_dir: str | Path = "runs/demo", out: str | Path | None = None, quick: bool = False, *,
                  base: str = "minilm", llm: str = "smollm2", split: str = "test",
                  console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) the four ablated unified models of a demo run and evaluate them beside it.

    ``run_dir`` must hold a demo run (its ``pipeline.json``); with ``quick`` one that holds none gets the quick
    demo pipeline run there first, with ``base`` (used only then) and ``llm``, which is also the LLM in the loop.
    ``split="dev"`` evaluates on the dev split, into ``ablations-dev`` beside the demo's ``eval-dev``, for tuning."""
    from llm_embedder.evaluate import run_evaluation, write_report
    from llm_embedder.evaluate.run import forget_systems
    from llm_embedder.pipeline import prompt_items, run_pipeline, split_suffix
    from llm_embedder.tasks import list_tasks

    suffix = split_suffix(split)
    console = console or Console()
    run_dir = Path(run_dir)
    models_dir = (Path(out) if out is not None else run_dir / "ablations") / "models"  # one set for both splits
    out = Path(out) if out is not None else run_dir / f"ablations{suffix}"
    if not (run_dir / "pipeline.json").is_file():
        if not quick:  # a mistyped run dir must not start the full ~30-minute demo there
            raise FileNotFoundError(f"{run_dir} holds no demo run (no pipeline.json); run `llm-embedder demo --out "
                                    f"{run_dir}` first, or pass --quick to make a quick one")
        console.rule("[bold]no demo run yet: running the quick demo pipeline first")
        run_pipeline(run_dir, quick=True, base=base, llm=llm, console=console)
    pipeline_cfg, unified_cfg = read_run(run_dir)
    settings = {k: v for k, v in unified_cfg.items() if k not in ("out", "resume")}
    settings["data"] = locate_training_files(settings["data"], run_dir)
    if pipeline_cfg.get("llm_queries"):  # a mistyped LLM fails now, not after the four trainings
        from llm_embedder.llm.loading import resolve_llm_path

        resolve_llm_path(llm)

    console.rule("[bold]1/2 training the ablated unified models (same data, steps, batch, lr)")
    models: dict[str, tuple[Path, bool]] = {"unified": (run_dir / "models" / "unified", True)}
    retrained = []
    for name, (slug, change) in ABLATIONS.items():
        console.print(f"[bold]{name}[/]: {change}")
        model_dir = models_dir / slug
        if train_ablation(model_dir, {**settings, **change}, console):
            retrained.append(name)
        models[name] = (model_dir, change.get("instructions", True))

    console.rule("[bold]2/2 evaluation with the LLM in the loop (the demo's settings)")
    drop_stale_results(out, pipeline_cfg)
    if retrained:
        forget_systems(out, tuple(retrained))
    seed_shared_results(run_dir / f"eval{suffix}", out)
    lm = None
    if pipeline_cfg.get("llm_queries"):
        from llm_embedder.llm import CausalLM

        lm = CausalLM(llm, fast=pipeline_cfg.get("llm_fast"))
    tasks = [t for t in list_tasks() if (run_dir / "train" / t).is_dir() and (run_dir / "data" / t).is_dir()]
    embed_fast = pipeline_cfg.get("embed_fast")  # runs from before the setting encoded exactly
    max_length = pipeline_cfg.get("max_length")  # every embedder keeps the training length, as in the demo
    systems = systems_for(models, settings["base"], fast=embed_fast, max_length=max_length)
    results = run_evaluation(
        run_dir / "data", tasks, systems, out, lm=lm, baselines=False, split=split,
        max_queries=pipeline_cfg["eval_queries"], max_llm_queries=pipeline_cfg["llm_queries"],
        max_corpus=pipeline_cfg["max_corpus"], max_candidates=pipeline_cfg["max_candidates"],
        generate=pipeline_cfg.get("generate", False),
        # as the demo run evaluated its models
        prompt_items=prompt_items(pipeline_cfg), embed_fast=embed_fast, embed_max_length=max_length,
    )
    plots = write_report(results, out)
    (out / "results.md").write_text("# Ablations\n\n" + (out / "results.md").read_text(encoding="utf-8")
                                    .removeprefix("# Evaluation\n\n"), encoding="utf-8")
    console.print((out / "results.md").read_text(encoding="utf-8").split("###")[0], soft_wrap=True, highlight=False)
    from llm_embedder.evaluate.run import PER_QUERY_FILE, load_results

    for line in compare(results, load_results(out, PER_QUERY_FILE)):
        console.print(line, highlight=False)
    console.print("plots: " + ", ".join(str(p) for p in plots), markup=False, soft_wrap=True)
    return results
