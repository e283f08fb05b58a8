"""benchmarks/gpu_check.py on a machine without a GPU: a clear message, exit 0, a 'skipped' result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_without_cuda_exits_cleanly(tmp_path: Path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    assert json.loads(out.read_text())["skipped"] == "no CUDA device"


def test_cpu_smoke_runs_our_own_code_path(tmp_path: Path):
    # what the GPU check runs of llm_embedder itself, on tiny models on the CPU: it must not rot between GPU loans
    out = tmp_path / "smoke.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(SCRIPT), "--cpu-smoke", "--checks", "code,neighbours", "--json", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result) >= {"code", "neighbours"} and "train" not in result
    assert result["code"]["train"]["steps"] == 16
    assert result["code"]["train"]["last_loss"] < result["code"]["train"]["first_loss"]
    assert result["code"]["eval"]["eval_batch_tokens"] == 1  # on the CPU each prompt is scored alone
    assert result["code"]["eval"]["batched_equals_alone"] and result["code"]["eval"]["beside_others_equals_fewer"]
    bad = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--checks", "speed"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "unknown checks ['speed']" in bad.stderr
