"""Write evaluation results as a markdown table and one PNG bar chart per task."""

from __future__ import annotations

from pathlib import Path

from llm_embedder.evaluate.downstream import main_metric
from llm_embedder.evaluate.rankers import GoldRanker, TeacherRanker


def shown_metric(task: str, metrics: dict[str, dict[str, float]]) -> tuple[str, bool]:
    """The metric a task's column and plot show: its main one, or NDCG@10 where no system has the main one (an
    LLM task evaluated without the LLM, ``--llm none``)."""
    name, higher = main_metric(task)
    if not any(name in values for values in metrics.values()) and any("ndcg@10" in v for v in metrics.values()):
        return "ndcg@10", True
    return name, higher


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per system, one column per task's main metric (``shown_metric``; the arrow says which way is
    better)."""
    tasks = list(results)
    systems: list[str] = []
    for task in tasks:
        systems += [s for s in results[task] if s not in systems]
    shown = {t: shown_metric(t, results[t]) for t in tasks}
    header = ["system"] + [f"{t} {shown[t][0]} {'↑' if shown[t][1] else '↓'}" for t in tasks]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for system in systems:
        cells = [system]
        for task in tasks:
            value = results[task].get(system, {}).get(shown[task][0])
            cells.append("–" if value is None else f"{value:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def detail_table(task: str, metrics: dict[str, dict[str, float]]) -> str:
    names = sorted({m for values in metrics.values() for m in values})
    if not names:  # labels none and no LLM: a table without columns would not render
        return f"### {task}\n\nnothing measured: no record has labelled items (pos_index) and no LLM was given\n"
    lines = [f"### {task}", "", "| system | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for system, values in metrics.items():
        lines.append(f"| {system} | " + " | ".join(f"{values[m]:.4f}" if m in values else "–" for m in names) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, dict[str, dict[str, float]]], out_dir: str | Path) -> list[Path]:
    """results.md (summary + per-task detail) and plots/<task>.png; returns the plot paths. Other plots in
    plots/ (of tasks an earlier evaluation under other settings had) are removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    text = "# Evaluation\n\n" + markdown_table(results) + "\n" + "\n".join(
        detail_table(task, metrics) for task, metrics in results.items()
    )
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    paths = []
    for task, metrics in results.items():
        name, higher = shown_metric(task, metrics)
        systems = [s for s in metrics if name in metrics[s]]
        if not systems:
            continue
        values = [metrics[s][name] for s in systems]
        fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(systems) + 1), 3.2))
        references = (GoldRanker.name, TeacherRanker.name)
        colours = ["#dd8452" if "unified" in s else "#aaaaaa" if s in references else "#4c72b0" for s in systems]
        ax.bar(range(len(systems)), values, color=colours)
        ax.set_xticks(range(len(systems)), systems, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: {name} ({'higher' if higher else 'lower'} is better)")
        fig.tight_layout()
        path = plot_dir / f"{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    for stale in set(plot_dir.glob("*.png")) - set(paths):  # a task no longer in the results: its plot would mislead
        stale.unlink()
    return paths
