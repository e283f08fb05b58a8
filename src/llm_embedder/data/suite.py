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
from llm_embedder.io import DataError, atomic_write, check_output_dir, write_jsonl

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


def _settings(manifest: dict[str, Any]) -> tuple[Any, ...]:
    """What a build's files depend on: size, seed, format version and source package versions."""
    return manifest.get("size"), manifest.get("seed"), manifest.get("format_version"), manifest.get("sources")


def _read_manifest(out: Path) -> dict[str, Any] | None:
    """An earlier build's manifest in ``out`` (None where there is none); one that is no suite manifest is
    refused naming the file."""
    path = out / "manifest.json"
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a task suite manifest ({err}); remove it or give another --out") from None
    if not isinstance(old, dict) or not isinstance(old.get("tasks", {}), dict):
        raise DataError(f"{path}: not a task suite manifest (expected a JSON object with a 'tasks' object); "
                        "remove it or give another --out")
    return old


def _finished(out: Path, old: dict[str, Any] | None) -> dict[str, Any]:
    """The task entries of an earlier build whose files are all there."""
    done = {}
    for task, entry in ((old or {}).get("tasks") or {}).items():
        counts = entry.get("counts", {}) if isinstance(entry, dict) else {}
        files = [out / task / f"{s}.jsonl" for s in SPLITS]
        if "corpus" in counts:
            files.append(out / task / "corpus.jsonl")
        if isinstance(entry, dict) and all(f.exists() for f in files):
            done[task] = entry
    return done


def _check_same_settings(out: Path, cfg: BuildConfig, old: dict[str, Any] | None, chosen: list[str]) -> None:
    """Refuse a build whose settings differ from those of tasks it would leave in ``out``: the manifest
    records one size and seed for the suite, so those tasks would be listed under settings they were not built
    with."""
    if old is None or _settings(old) == _settings(_manifest(cfg, {}, complete=False)):
        return
    left = [task for task in _finished(out, old) if task not in chosen]
    if not left:  # every task it holds is rebuilt with the new settings
        return
    how = f"size {old.get('size')}, seed {old.get('seed')}"
    if (old.get("size"), old.get("seed")) == (cfg.size, cfg.seed):
        how += ", another format or source package versions"
    raise ValueError(f"--out {out} holds tasks built with other settings ({how}): {', '.join(left)}; a build with "
                     f"size {cfg.size}, seed {cfg.seed} would mix them in one suite: build it with its settings, "
                     "build every task it holds, or give another --out")


def build_suite(
    out: str | Path,
    size: str = "small",
    seed: int = 0,
    tasks: list[str] | tuple[str, ...] | None = None,
    resume: bool = True,
    progress: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Build the tasks into ``out``; returns the manifest. ``progress(task, status)`` is called per task.

    A folder that holds files but no manifest.json is refused (the build would replace a user's files), as is
    one holding tasks built with other settings that this build would leave beside its own."""
    cfg = BuildConfig(size=size, seed=seed)
    out = check_output_dir(out, ("manifest.json",), "a task suite build")
    chosen = list(tasks or TASKS)
    unknown = [t for t in chosen if t not in BUILDERS]
    if unknown:
        raise ValueError(f"no builder for task(s) {unknown}; buildable tasks: {', '.join(TASKS)}")
    old = _read_manifest(out)
    _check_same_settings(out, cfg, old, chosen)
    same = old is not None and _settings(old) == _settings(_manifest(cfg, {}, complete=False))
    # finished tasks of an earlier build with the same settings: kept (resume), and listed when not rebuilt
    earlier = _finished(out, old) if same else {}
    done = earlier if resume else {t: e for t, e in earlier.items() if t not in chosen}
    # the manifest first: it marks the folder as a suite build, so an interrupted first task resumes
    _write_json(out / "manifest.json", _manifest(cfg, done, complete=False))
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
            counts = ", ".join(f"{split} {n}" for split, n in entries[task]["counts"].items())
            progress(task, f"done ({counts})")
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
