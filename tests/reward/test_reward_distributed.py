"""`torchrun --nproc_per_node 2 -m llm_embedder score` (gloo, CPU) writes exactly the single-process output.

Both runs use one thread per process (torchrun's default): float sums can differ in the last bit between
thread counts, and byte equality is the claim here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from reward_helpers import write_records


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.distributed
def test_two_process_output_equals_single_process(tiny_lm_dir, tmp_path):
    src = write_records(tmp_path / "in.jsonl", n=14)
    args = ["score", str(src), "--llm", str(tiny_lm_dir), "--chunk-pairs", "6", "--device", "cpu"]
    run([sys.executable, "-m", "llm_embedder", *args, "--out", str(tmp_path / "single.jsonl")], tmp_path)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "llm_embedder", *args,
         "--out", str(tmp_path / "multi.jsonl")], tmp_path)
    single = (tmp_path / "single.jsonl").read_bytes()
    assert single.count(b"\n") == 13
    assert (tmp_path / "multi.jsonl").read_bytes() == single
    assert not list(tmp_path.glob("*.part"))  # parts are merged and removed
