"""Build the offline task suite: every task's splits and corpus, a manifest, and a data card.

Layout: ``DIR/<task>/{train,dev,test}.jsonl`` (+ ``corpus.jsonl`` for qa, icl, tool, convsearch),
``DIR/manifest.json`` and ``DIR/DATA_CARD.md``. The manifest is rewritten after each task, so an interrupted
build resumes from the first unfinished task; the outputs depend only on (size, seed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_embedder.data.chat import build_chat
from llm_embedder.data.common import SPLITS, BuildConfig, Record, TaskData, number_records
from llm_embedder.data.convsearch import build_convsearch
from llm_embedder.data.icl import build_icl
from llm_embedder.data.lrlm import build_lrlm
from llm_embedder.data.qa import build_qa
from llm_embedder.data.sources import SOURCES, source_versions
from llm_embedder.data.tool import build_tool
from llm_embedder.io import atomic_write, write_jsonl

FORMAT_VERSION = 2  # 2: the tool corpus names a function in "name", not "title"
BUILDERS: dict[str, Callable[[BuildConfig], TaskData]] = {
    "qa": build_qa, "icl": build_icl, "chat": build_chat, "lrlm": build_lrlm, "tool": build_tool,
    "convsearch": build_convsearch,
}
TASKS = tuple(BUILDERS)


def positive_texts(record: Record) -> list[str]:
    """The texts a record counts as relevant: ``pos``, plus the history/candidate turns named by ``pos_index``."""
    texts = list(record.get("pos") or [])
    pool = record.get("history") if "history" in record else (record.get("neg") if not texts else None)
    if pool is not None:
        texts += [pool[i] for i in record.get("pos_index") or [] if 0 <= i < len(pool)]
    return texts


def enforce_disjoint(splits: dict[str, list[Record]]) -> dict[str, int]:
    """Drop dev records that repeat a test query or positive, and train records that repeat either; renumber."""
    seen_queries: set[str] = set()
    seen_pos: set[str] = set()
    dropped = {}
    for split in ("test", "dev", "train"):
        kept = [
            r for r in splits.get(split, [])
            if r["query"].casefold() not in seen_queries and not seen_pos.intersection(positive_texts(r))
        ]
        dropped[split] = len(splits.get(split, [])) - len(kept)
        splits[split] = number_records(kept)
        for record in kept:
            seen_queries.add(record["query"].casefold())
            seen_pos.update(positive_texts(record))
    return dropped


def write_task(out: Path, data: TaskData) -> dict[str, Any]:
    """Write one task's files (atomically) and return its manifest entry."""
    folder = out / data.task
    if data.corpus is not None:
        write_jsonl(folder / "corpus.jsonl", data.corpus)
    for split in SPLITS:
        write_jsonl(folder / f"{split}.jsonl", data.splits[split])
    return {
        "counts": data.counts(),
        "sources": list(data.sources),
        "how": data.how,
        "constructed": data.constructed,
        "stats": data.stats,
    }


def _manifest(cfg: BuildConfig, tasks: dict[str, Any], complete: bool) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "size": cfg.size,
        "seed": cfg.seed,
        "complete": complete,
        "sources": source_versions(),
        "tasks": tasks,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path) as handle:
        handle.write(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def _resumable(out: Path, cfg: BuildConfig) -> dict[str, Any]:
    """Finished task entries of an earlier build with the same settings (empty when none)."""
    path = out / "manifest.json"
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    if (old.get("size"), old.get("seed"), old.get("format_version"), old.get("sources")) != (
        cfg.size, cfg.seed, FORMAT_VERSION, source_versions()
    ):
        return {}
    done = {}
    for task, entry in (old.get("tasks") or {}).items():
        files = [out / task / f"{s}.jsonl" for s in SPLITS]
        if "corpus" in entry.get("counts", {}):
            files.append(out / task / "corpus.jsonl")
        if all(f.exists() for f in files):
            done[task] = entry
    return done


def build_suite(
    out: str | Path,
    size: str = "small",
    seed: int = 0,
    tasks: list[str] | tuple[str, ...] | None = None,
    resume: bool = True,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Build the tasks into ``out``; returns the manifest. ``progress(task, status)`` is called per task."""
    cfg = BuildConfig(size=size, seed=seed)
    out = Path(out)
    chosen = list(tasks or TASKS)
    unknown = [t for t in chosen if t not in BUILDERS]
    if unknown:
        raise ValueError(f"no builder for task(s) {unknown}; buildable tasks: {', '.join(TASKS)}")
    done = _resumable(out, cfg) if resume else {}
    entries: dict[str, Any] = {}
    for task in chosen:
        if task in done:
            entries[task] = done[task]
            if progress:
                progress(task, "kept (already built)")
            continue
        if progress:
            progress(task, "building")
        data = BUILDERS[task](cfg)
        data.stats["dropped_for_disjointness"] = enforce_disjoint(data.splits)
        entries[task] = write_task(out, data)
        _write_json(out / "manifest.json", _manifest(cfg, {**done, **entries}, complete=False))
        if progress:
            progress(task, f"done {entries[task]['counts']}")
    # tasks of an earlier build with the same settings stay listed (a `--task` build adds to it)
    built = {**done, **entries}
    manifest = _manifest(cfg, {t: built[t] for t in [*TASKS, *sorted(built)] if t in built}, complete=True)
    _write_json(out / "manifest.json", manifest)
    with atomic_write(out / "DATA_CARD.md") as handle:
        handle.write(data_card(manifest))
    return manifest


def data_card(manifest: dict[str, Any]) -> str:
    """The markdown data card: per task its sources and licences, how it was built, counts, what is constructed."""
    lines = [
        "# llm-embedder offline task suite — data card",
        "",
        f"Built with `llm-embedder data build --size {manifest['size']} --seed {manifest['seed']}`. "
        "All data is read at build time from installed packages; none of it is stored in the repository.",
        "",
        "| package | version | licence of the data used |",
        "|---|---|---|",
    ]
    for source in SOURCES.values():
        version = manifest["sources"].get(source.distribution, "?")
        lines.append(f"| {source.distribution} | {version} | {source.licence} |")
    for task, entry in manifest["tasks"].items():
        counts = ", ".join(f"{k}: {v:,}" for k, v in entry["counts"].items())
        sources = "; ".join(
            f"{SOURCES[s].distribution} {manifest['sources'].get(SOURCES[s].distribution, '?')} ({SOURCES[s].licence})"
            for s in entry["sources"]
        )
        lines += [
            "", f"## {task}", "",
            f"- **Sources:** {sources}",
            f"- **Counts:** {counts}",
            f"- **How built:** {entry['how']}",
            f"- **Constructed rather than human-written:** {entry['constructed']}",
        ]
        dropped = entry.get("stats", {}).get("dropped_for_disjointness")
        if dropped and any(dropped.values()):
            lines.append(f"- **Dropped to keep splits disjoint:** {dropped}")
    return "\n".join(lines) + "\n"
