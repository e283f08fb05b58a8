"""A feature whose optional extra is missing is refused in one line naming the extra, before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_embedder.extras import MissingExtraError, extra_of, require_extra


def run_without(modules: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a process where ``modules`` cannot be imported (as if their extra were not installed)."""
    code = (f"import sys\nfor name in {modules!r}: sys.modules[name] = None\n"
            f"sys.argv = ['llm-embedder', *{list(args)!r}]\nfrom llm_embedder.cli import main\nmain()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_serve_index_and_export_name_their_missing_extra_before_any_work(tiny_embedder_dir: Path,
                                                                         tmp_path: Path) -> None:
    """Without [serve] `serve` printed a traceback ending "No module named 'uvicorn'"; without [milvus] `index
    --backend milvus` encoded the corpus, then printed a 73-line traceback and left a partial folder; without [onnx]
    `export` failed inside torch.onnx ("Module onnx is not installed!")."""
    line = one_line_error(run_without(["uvicorn"], "serve", "--model", str(tiny_embedder_dir), cwd=tmp_path))
    assert line == """error: serve needs the 'serve' extra: pip install "llm-embedder[serve]" (missing: uvicorn)"""

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5)))
    proc = run_without(["pymilvus"], "index", "--task", "qa", "--corpus", str(corpus), "--out", "idx", "--model",
                       str(tiny_embedder_dir), "--backend", "milvus", cwd=tmp_path)
    assert "the Milvus backend needs the 'milvus' extra" in one_line_error(proc)
    assert "encoding" not in proc.stderr and not (tmp_path / "idx").exists()

    proc = run_without(["onnx"], "export", "--model", str(tiny_embedder_dir), "--out", "onnx-out", cwd=tmp_path)
    assert 'the ONNX export needs the \'onnx\' extra: pip install "llm-embedder[onnx]"' in one_line_error(proc)
    assert not (tmp_path / "onnx-out").exists()


def test_require_extra_and_extra_of(monkeypatch: pytest.MonkeyPatch) -> None:
    require_extra("serve", "serve")  # installed here (the dev setup installs every extra)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    message = r"the ONNX backends needs the 'onnx' extra: .*\(missing: onnxruntime\)"
    with pytest.raises(MissingExtraError, match=message):
        require_extra("onnx", "the ONNX backends", ("onnxruntime",))
    assert extra_of("fastapi.responses") == "serve" and extra_of("milvus_lite") == "milvus"
    assert extra_of("numpy") is None
    assert issubclass(MissingExtraError, ImportError)  # code catching ImportError keeps working
