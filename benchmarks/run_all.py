"""Run every benchmark (``make bench``; ``QUICK=1 make bench`` is the under-5-minutes mode) and collect JSON.

Each benchmark runs in its own process, one after another (they would only slow each other down on a small
box). Scripts that take ``--json`` write their figures there; for the others the tail of their output is
kept. Everything lands in benchmarks/results/latest.json (written atomically, also after each benchmark,
so an interrupted run keeps what finished).

A run of every benchmark replaces the file. ``--only NAME ...`` re-runs those benchmarks and merges them into
the existing file: the other benchmarks' entries are kept as they were, every entry records when it ran
(``run_at``), in which mode (``quick``) and on what machine, and the top level lists what this run re-ran
(``rerun``).

    python benchmarks/run_all.py [--quick] [--only encode search ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULTS_DIR, machine_info, write_json  # noqa: E402

# name -> (script, extra args in full mode, extra args in quick mode). The quick sizes keep the whole run under
# 5 minutes on a 2-core box with a co-tenant (benchmarks/README.md), each benchmark still printing its ratios.
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "encode": ("bench_encode.py", [], ["--quick"]),
    "search": ("bench_search.py", [], ["--quick"]),
    "milvus_search": ("bench_milvus_search.py", [], ["--quick"]),
    "index_memory": ("bench_index_memory.py", [], ["--quick"]),
    "reward": ("bench_reward.py", [], ["--quick", "--queries", "2", "--candidates", "3"]),
    "serve": ("bench_serve.py", [], ["--quick", "--requests", "200", "--seconds", "5", "--clients", "8"]),
    "eval_scores": ("bench_eval_scores.py", [], ["--queries", "4", "--rounds", "1"]),
    "gpu_check": ("gpu_check.py", [], []),
}


def run_one(name: str, quick: bool, timeout: float) -> dict:
    script, full_args, quick_args = BENCHMARKS[name]
    path = HERE / script
    if not path.is_file():
        return {"status": "missing", "script": script}
    cmd = [sys.executable, str(path), *(quick_args if quick else full_args)]
    takes_json = '"--json"' in path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        if takes_json:
            cmd += ["--json", str(out)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as err:
            code, stdout, stderr = "timeout", _text(err.stdout), _text(err.stderr)
        record: dict = {"status": "ok" if code == 0 else "failed", "returncode": code,
                        "seconds": round(time.perf_counter() - start, 1), "command": " ".join(cmd[1:])}
        if takes_json and out.is_file():
            record["result"] = json.loads(out.read_text(encoding="utf-8"))
        record["output_tail"] = stdout.strip().splitlines()[-25:]
        if code != 0:
            record["stderr_tail"] = stderr.strip().splitlines()[-15:]
    return record


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def load_previous(path: Path) -> dict:
    """The benchmarks of an earlier report at ``path`` (empty if there is none or it cannot be read), each entry
    given the run_at / quick / machine of the run that made it where it does not carry them (older files)."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        print(f"note: {path} is not a readable report ({err}); it is replaced, not merged")
        return {}
    if not isinstance(old, dict) or not isinstance(old.get("benchmarks"), dict):
        print(f"note: {path} holds no benchmarks; it is replaced, not merged")
        return {}
    kept = {}
    for name, record in old["benchmarks"].items():
        if isinstance(record, dict):
            kept[name] = {"run_at": old.get("started"), "quick": old.get("quick"), "machine": old.get("machine"),
                          **record}
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run in under 5 minutes")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=None, metavar="NAME",
                        help=f"run only these ({', '.join(BENCHMARKS)}) and merge them into --out")
    parser.add_argument("--out", default=str(RESULTS_DIR / "latest.json"))
    args = parser.parse_args(argv)
    names = list(dict.fromkeys(args.only)) if args.only else list(BENCHMARKS)
    timeout = 240 if args.quick else 3 * 3600
    machine = machine_info()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    previous = load_previous(Path(args.out)) if args.only else {}
    kept = {name: record for name, record in previous.items() if name not in names}
    report: dict = {"started": started, "quick": args.quick, "machine": machine, "benchmarks": {}}
    if args.only:
        report["rerun"] = names
        if kept:
            print("kept from earlier runs: " + ", ".join(
                f"{name} ({'quick' if record.get('quick') else 'full'}, {record.get('run_at')})"
                for name, record in kept.items()))

    def collect(done: dict) -> dict:  # BENCHMARKS order, then any names this script no longer knows
        merged = {**kept, **done}
        return {name: merged[name] for name in [*BENCHMARKS, *merged] if name in merged}

    done: dict = {}
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        run_at = datetime.now(UTC).isoformat(timespec="seconds")
        record = {"run_at": run_at, "quick": args.quick, "machine": machine, **run_one(name, args.quick, timeout)}
        done[name] = record
        report["benchmarks"] = collect(done)
        for line in record.get("output_tail", []):
            print(f"   {line}")
        if record["status"] == "failed":
            failed.append(name)
            print(f"   FAILED ({record['returncode']}): " + " | ".join(record.get("stderr_tail", [])[-3:]))
        elif record["status"] == "missing":
            print("   (not present, skipped)")
        write_json(args.out, report)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_json(args.out, report)
    total = sum(r.get("seconds", 0) for r in done.values())
    merged_note = f"; kept {len(kept)} earlier entries" if kept else ""
    print(f"wrote {args.out} ({total:.0f}s of benchmarks{merged_note}"
          f"{'; failed: ' + ', '.join(failed) if failed else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
