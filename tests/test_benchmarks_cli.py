"""The benchmark scripts' and the example's options: bad values are one-line usage errors before any work, an explicit
size beats --quick's, run_all merges a partial run, and search recall does not count FAISS's -1 padding."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def load(path: Path):
    """A benchmark script as a module (its own sys.path setup finds benchmarks/_common.py)."""
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def poison(tmp_path_factory) -> Path:
    """A directory whose torch / transformers / sentence_transformers refuse to import: on PYTHONPATH it proves an
    option was refused before any model work started (and keeps a script that would start that work cheap)."""
    root = tmp_path_factory.mktemp("poison")
    for name in ("torch", "transformers", "sentence_transformers"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} imported: the option was not refused')\n")
    return root


BAD_OPTIONS = [
    ("benchmarks/bench_search.py", ["--n", "0"], "argument --n: must be at least 10"),
    ("benchmarks/bench_search.py", ["--n", "5"], "argument --n: must be at least 10"),
    ("benchmarks/bench_search.py", ["--n", "-5"], "argument --n"),
    ("benchmarks/bench_search.py", ["--queries", "0"], "argument --queries: must be at least 1"),
    ("benchmarks/bench_search.py", ["--queries", "-3"], "argument --queries"),
    ("benchmarks/bench_encode.py", ["--threads", "0"], "argument --threads: must be at least 1"),
    ("benchmarks/bench_serve.py", ["--clients", "0"], "argument --clients: must be at least 1"),
    ("benchmarks/bench_serve.py", ["--requests", "0"], "argument --requests"),
    ("benchmarks/bench_serve.py", ["--seconds", "0"], "argument --seconds"),
    ("benchmarks/bench_serve.py", ["--requests", "1", "--rounds", "2"], "must be at least --rounds"),
    ("benchmarks/bench_reward.py", ["--queries", "0"], "argument --queries: must be at least 1"),
    ("benchmarks/bench_reward.py", ["--queries", "1", "--candidates", "0"], "--candidates: must be at least 2"),
    ("benchmarks/bench_reward.py", ["--candidates", "1"], "argument --candidates"),
    ("benchmarks/bench_eval_scores.py", ["--queries", "0"], "argument --queries: must be at least 1"),
    ("benchmarks/bench_eval_scores.py", ["--rounds", "0"], "argument --rounds"),
    ("benchmarks/bench_index_memory.py", ["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    ("benchmarks/bench_index_memory.py", ["--n", "0"], "argument --n"),
    ("benchmarks/bench_index_memory.py", ["--factory", "Bogus"], "argument --factory: invalid FAISS factory string"),
    ("examples/assistant.py", ["--kb-stride", "0"], "argument --kb-stride: must be at least 1"),
    ("examples/assistant.py", ["--turns"], "argument --turns: expected at least one argument"),
]


@pytest.mark.parametrize(("script", "options", "message"), BAD_OPTIONS, ids=lambda x: " ".join(x) if
                         isinstance(x, list) else None)
def test_bad_option_is_a_one_line_usage_error(script, options, message, poison):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(ROOT / "src")]), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / script), *options], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, proc.stderr


def test_gpu_check_refuses_unknown_checks_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--checks", "bogus"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown checks ['bogus']" in proc.stderr


def test_recall_ignores_the_padding_of_short_results():
    search = load(BENCH / "bench_search.py")
    pad = [-1] * 5
    # 5 vectors, k = 10: both lists are padded with -1; all 5 real neighbours found is recall 1, not 0.6
    assert search.recall_at_k(np.array([[4, 3, 2, 1, 0, *pad]]), np.array([[0, 1, 2, 3, 4, *pad]])) == 1.0
    # one of the 5 real neighbours found: 0.2 (the shared -1 ids are not a hit)
    assert search.recall_at_k(np.array([[0, *[-1] * 9]]), np.array([[0, 1, 2, 3, 4, *pad]])) == pytest.approx(0.2)
    assert search.recall_at_k(np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]]), np.arange(10)[None, ::-1]) == 1.0


def test_search_explicit_n_beats_quick(tmp_path):
    search = load(BENCH / "bench_search.py")
    result = search.main(["--quick", "--n", "300", "--queries", "5", "--json", str(tmp_path / "s.json")])
    assert result["n"] == 300 and json.loads((tmp_path / "s.json").read_text())["n"] == 300
    assert "sweep" not in result


def test_search_full_mode_memory_is_the_index_size_and_the_sweep_names_its_size():
    search = load(BENCH / "bench_search.py")
    result = search.main(["--n", "300", "--queries", "5"])
    assert "sweep_100k" not in result
    assert result["sweep"]["n"] == 300 and len(result["sweep"]["rows"]) == 4
    # 300 x 384 float32 is 0.44 MiB: every index holds at least its vectors, whatever the allocator did
    assert result["flat"]["index_mb"] >= 0.4
    assert all(row["index_mb"] >= 0.4 for row in result["sweep"]["rows"])
    assert result["hnsw"]["index_mb"] > result["flat"]["index_mb"]  # vectors plus the graph


def test_index_memory_explicit_n_beats_quick(monkeypatch, capsys):
    memory = load(BENCH / "bench_index_memory.py")
    seen = {}

    def fake_run(cmd, **_):
        seen["cmd"] = cmd
        n = cmd[cmd.index("--n") + 1]
        out = {"n": int(n), "factory": "SQ8", "batch_size": 256, "count": int(n), "dim": 384, "seconds": 0,
               "peak_rss_mb": 1, "rss_before_build_mb": 1, "index_file_mb": 0}
        return subprocess.CompletedProcess(cmd, 0, stdout=json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    monkeypatch.setattr(memory, "machine_info", lambda: {})
    result = memory.main(["--quick", "--n", "50"])
    assert seen["cmd"][seen["cmd"].index("--n") + 1] == "50" and result["count"] == 50
    memory.main(["--quick"])
    assert seen["cmd"][seen["cmd"].index("--n") + 1] == "10000"


@pytest.fixture
def run_all(monkeypatch):
    module = load(BENCH / "run_all.py")
    calls = []

    def fake_run_one(name, quick, timeout):
        calls.append(name)
        return {"status": "ok", "returncode": 0, "seconds": 0.1, "command": name, "output_tail": [f"new {name}"]}

    monkeypatch.setattr(module, "run_one", fake_run_one)
    monkeypatch.setattr(module, "machine_info", lambda: {"cpu": "test"})
    module.calls = calls
    return module


def test_run_all_only_needs_names(run_all, tmp_path, capsys):
    out = tmp_path / "latest.json"
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--only", "--out", str(out)])
    assert exc.value.code == 2 and run_all.calls == [] and not out.exists()
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--only", "serch", "--out", str(out)])
    assert exc.value.code == 2 and "invalid choice: 'serch'" in capsys.readouterr().err
    assert run_all.calls == []


def test_run_all_only_merges_into_the_existing_report(run_all, tmp_path):
    out = tmp_path / "latest.json"
    old = {"started": "2020-01-01T00:00:00+00:00", "quick": False, "machine": {"cpu": "old"},
           "benchmarks": {"encode": {"status": "ok", "output_tail": ["old encode"]},
                          "search": {"status": "ok", "output_tail": ["old search"]}},
           "finished": "2020-01-01T01:00:00+00:00"}
    out.write_text(json.dumps(old))
    assert run_all.main(["--quick", "--only", "search", "--out", str(out)]) == 0
    assert run_all.calls == ["search"]
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == ["encode", "search"]
    encode, search = report["benchmarks"]["encode"], report["benchmarks"]["search"]
    assert encode["output_tail"] == ["old encode"]  # kept as it was, saying when, how and where it ran
    assert encode["run_at"] == "2020-01-01T00:00:00+00:00" and encode["quick"] is False
    assert encode["machine"] == {"cpu": "old"}
    assert search["output_tail"] == ["new search"] and search["quick"] is True and search["run_at"] > "2020"
    assert report["rerun"] == ["search"] and report["quick"] is True
    # a second partial run keeps both earlier entries, each with its own run_at
    assert run_all.main(["--only", "index_memory", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == ["encode", "search", "index_memory"]
    assert report["benchmarks"]["search"]["run_at"] == search["run_at"]
    assert report["benchmarks"]["search"]["quick"] is True and report["benchmarks"]["index_memory"]["quick"] is False


def test_run_all_without_only_replaces_the_report(run_all, tmp_path):
    out = tmp_path / "latest.json"
    out.write_text(json.dumps({"benchmarks": {"retired": {"status": "ok"}}}))
    assert run_all.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["benchmarks"]) == list(run_all.BENCHMARKS) and "rerun" not in report


def test_time_interleaved_rounds_and_warm_up():
    common = load(BENCH / "_common.py")
    counts = {"a": 0, "b": 0}

    def system(name):
        def run():
            counts[name] += 1
        return run

    timing = common.time_interleaved({"a": system("a"), "b": system("b")}, 2, warm=False)
    assert counts == {"a": 2, "b": 2} and set(timing) == {"a", "b"}
    common.time_interleaved({"a": system("a"), "b": system("b")}, 2)
    assert counts == {"a": 5, "b": 5}


def test_serve_rounds_sum_into_one_result():
    serve = load(BENCH / "bench_serve.py")
    first = serve.Result("batched", 10, 1, 2.0, [0.1] * 9, merged=9, batches=3)
    second = serve.Result("batched", 6, 0, 1.0, [0.2] * 6, merged=6, batches=1)
    total = first + second
    assert (total.requests, total.errors, total.seconds, len(total.latencies)) == (16, 1, 3.0, 15)
    assert total.mean_batch == pytest.approx(15 / 4) and total.throughput == pytest.approx(15 / 3.0)


def test_serve_ratio_when_every_one_at_a_time_request_failed():
    """The benchmark divided by zero (ZeroDivisionError after the table) when no one-at-a-time request succeeded."""
    serve = load(BENCH / "bench_serve.py")
    batched = serve.Result("batched", 10, 0, 2.0, [0.1] * 10, merged=10, batches=2)
    failed = serve.Result("one-at-a-time", 4, 4, 2.0, [], merged=0, batches=0)
    assert serve.throughput_ratio(batched, failed) == "none (no one-at-a-time request succeeded)"
    assert serve.throughput_ratio(batched, batched) == "1.00x"
