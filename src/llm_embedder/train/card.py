"""The training card: what was trained on, with which losses and settings, and a loss curve per task."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from llm_embedder.tasks import get_task
from llm_embedder.train.examples import training_task

CARD_NAME = "TRAINING_CARD.md"
PLOT_NAME = "loss_curves.png"


def read_step_log(path: Path) -> list[dict[str, Any]]:
    """One record per step (the last one written wins: a resumed run re-does steps after its checkpoint)."""
    by_step: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").split("\n"):
            if line.strip():
                record = json.loads(line)
                by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def task_points(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One (step, task, loss) per task per step: a mixed batch's record is split into its task subgroups."""
    points = []
    for record in records:
        parts = record.get("task_losses") or {record["task"]: record["loss"]}
        points += [{"step": record["step"], "task": task, "loss": loss} for task, loss in parts.items()]
    return points


def plot_loss_curves(records: list[dict[str, Any]], path: Path, losses: dict[str, str] | None = None) -> Path:
    """One subplot per task: the loss at each step that trained on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_task: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in task_points(records):
        per_task[record["task"]].append((record["step"], record["loss"]))
    tasks = sorted(per_task) or ["(no steps)"]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.4 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks, strict=True):
        points = per_task.get(task, [])
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2, linewidth=1)
        loss = (losses or {}).get(task) or get_task(task).loss
        ax.set_title(f"{task} ({loss})" if points else task, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def batching_note(config) -> str:
    """How the run's batches were formed: homogeneous (interleaved or shuffled) or the mixed-batch ablation."""
    if not config.homogeneous:
        return ("Ablation: batches mix datasets (drawn uniformly from all of them); the loss is the count-weighted "
                "mean of each task subgroup's loss.")
    order = ("each dataset's batches are spread evenly over every epoch." if config.interleave_tasks
             else "all batches are shuffled together.")
    return f"Every global batch comes from one dataset (one file; a file listed twice counts twice); {order}"


def write_training_card(out: Path, config, files, batches: dict[str, int], extra: dict[str, Any]) -> Path:
    """Write ``TRAINING_CARD.md`` and ``loss_curves.png`` into ``out``."""
    records = read_step_log(out / "logs" / "steps.rank0.jsonl")
    task_losses = {f.task: config.loss_for(f.task) for f in files}
    plot_loss_curves(records, out / PLOT_NAME, task_losses)
    per_task: dict[str, list[float]] = defaultdict(list)
    for record in task_points(records):
        per_task[record["task"]].append(record["loss"])
    lines = [
        "# Training card", "",
        f"Base model: `{config.base}`. Steps: {extra['global_step']} (max {config.max_steps}). "
        f"Processes: {extra['world_size']}. Wall time: {extra['seconds']:.0f} s."
        + (f" Resumed from `{extra['resumed_from']}`." if extra.get("resumed_from") else ""), "",
        "## Data", "",
        batching_note(config), "",
        "| dataset | file | task | records | examples | filtered | truncated | global batches/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        lines.append(f"| {f.name} | `{f.path}` | {f.task} | {f.records} | {len(f.examples)} | {f.filtered} | "
                     f"{f.truncated} | {batches.get(f.name, 0)} |")
    lines += ["", "## Losses", "", "| task | loss | teacher T | positive | negatives | steps | first loss | "
              "last loss (mean of last 10) |", "|---|---|---|---|---|---|---|---|"]
    for name in sorted({f.task for f in files}):
        task = training_task(get_task(name), config.hard_labels, config.loss_override)
        losses, loss = per_task.get(name, []), task_losses[name]
        teacher_t = task.teacher_temperature if loss == "kl_distill" else ("1 (softmax)" if
                                                                           loss == "stable_distill" else "-")
        first = f"{losses[0]:.4f}" if losses else "-"
        last = f"{sum(losses[-10:]) / len(losses[-10:]):.4f}" if losses else "-"
        lines.append(f"| {name} | {loss} | {teacher_t} | {task.select_positive} | {task.select_negative} | "
                     f"{len(losses)} | {first} | {last} |")
    lines += [
        "", f"![loss per task]({PLOT_NAME})", "", "## Settings", "",
        f"lr {config.lr}, warm-up ratio {config.warmup_ratio}, weight decay {config.weight_decay} (AdamW, linear "
        f"decay), batch {config.batch_size} queries per process, group size {config.group_size} (1 positive + "
        f"{config.group_size - 1} negatives), τ {config.temperature}, max length {config.query_max_length} (query) / "
        f"{config.key_max_length} (key), seed {config.seed}, mixed precision {extra.get('precision', 'unknown')}, "
        f"self-paced lr {config.self_paced}."
        + (f" Saved weights: {1 - config.base_mix:g} x trained + {config.base_mix:g} x `{config.base}` (base_mix)."
           if config.base_mix else ""), "",
        f"Ablation settings: instructions: {str(config.instructions).lower()}, homogeneous: "
        f"{str(config.homogeneous).lower()}, hard_labels: {str(config.hard_labels).lower()}, loss_override: "
        f"{config.loss_override or '{}'}."
        + (f" Records dropped for lack of a labelled positive: "
           f"{', '.join(f'{f.task} {f.unlabelled}' for f in files if f.unlabelled)}."
           if any(f.unlabelled for f in files) else ""), "",
        "The task instructions are saved as named prompts (`<task>.query`, `<task>.key`) in "
        "`config_sentence_transformers.json`"
        + (f"; trained without instructions, so saved as empty prompts: {', '.join(config.trained_plain())}."
           if config.trained_plain() else "."), "",
    ]
    path = out / CARD_NAME
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
