"""`torchrun --nproc_per_node 2 -m llm_embedder score` (gloo, CPU) writes exactly the single-process output.

Both runs use one thread per process (torchrun's default): float sums can differ in the last bit between
thread counts, and byte equality is the claim here.
"""

from __future__ import annotations

import json
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


@pytest.mark.distributed
@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"])
def test_two_process_merge_keeps_records_with_unicode_line_separators(tiny_lm_dir, tmp_path, sep):
    """json.dumps(ensure_ascii=False) leaves U+2028/U+2029/U+0085 raw in a record; the merge must not split there."""
    src = tmp_path / "in.jsonl"
    recs = [{"query": f"what is thing {i}?", "task": "qa", "query_id": i, "answers": [f"widget {i}"],
             "pos": [f"thing {i} is a{sep}widget" if i == 0 else f"thing {i}"], "neg": [f"other {i}"]}
            for i in range(4)]
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "multi.jsonl"
    run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "llm_embedder", "score", str(src), "--llm",
         str(tiny_lm_dir), "--chunk-pairs", "1", "--device", "cpu", "--out", str(out)], tmp_path)
    data = out.read_bytes()
    assert data.count(b"\n") == 4
    got = [json.loads(line) for line in data.split(b"\n")[:-1]]
    assert [r["query_id"] for r in got] == [0, 1, 2, 3]
    assert got[0]["pos"] == [f"thing 0 is a{sep}widget"]
    assert all(len(r["teacher_scores"]) == 2 for r in got)
    assert not list(tmp_path.glob("*.part"))
