"""`llm-embedder serve` argument handling (no server started here)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.cli.serve import is_loopback, parse_indexes
from llm_embedder.serve.security import bearer_token, key_matches


def test_parse_indexes(tmp_path) -> None:
    (tmp_path / "a").mkdir()
    assert parse_indexes([f"docs={tmp_path / 'a'}"]) == {"docs": tmp_path / "a"}
    assert parse_indexes(None) == {}
    with pytest.raises(ValueError, match="NAME=DIR"):
        parse_indexes(["docs"])
    with pytest.raises(ValueError, match="twice"):
        parse_indexes([f"d={tmp_path / 'a'}", f"d={tmp_path / 'a'}"])
    with pytest.raises(FileNotFoundError, match="missing"):
        parse_indexes([f"d={tmp_path / 'missing'}"])


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")


def test_bearer_key_check() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None and bearer_token("Bearer ") is None
    assert key_matches(None, None) and key_matches("", "anything")
    assert key_matches("s3cret", "Bearer s3cret")
    assert not key_matches("s3cret", "Bearer s3cre") and not key_matches("s3cret", None)


def test_serve_help_lists_the_flags() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for flag in ("--model", "--index", "--host", "--port", "--api-key", "--max-inputs", "--max-chars",
                 "--max-batch-tokens", "--max-batch-requests", "--max-wait-ms"):
        assert flag in result.output
    assert "127.0.0.1" in result.output


def test_bad_port_and_log_level_are_refused_before_the_model_loads(monkeypatch) -> None:
    import llm_embedder.embedder as embedder_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(embedder_module, "Embedder", no_model)
    result = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2 and "--port" in result.output
    result = CliRunner().invoke(app, ["serve", "--log-level", "bogus"])
    assert isinstance(result.exception, ValueError)
    assert str(result.exception) == (
        "--log-level must be one of critical, error, warning, info, debug, trace, got 'bogus'"
    )
    # an address in use or a host that does not resolve: one clear error before loading, not uvicorn's exit 3
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert isinstance(result.exception, ValueError), result.output
    assert str(result.exception).startswith(f"cannot listen on 127.0.0.1:{port}: ")
    result = CliRunner().invoke(app, ["serve", "--host", "999.1.1.1"])
    assert isinstance(result.exception, ValueError) and "--host '999.1.1.1' does not resolve" in str(result.exception)


def test_port_0_prints_the_port_the_os_chose_and_serves_there(tiny_embedder_dir, tmp_path) -> None:
    """It printed 'on http://127.0.0.1:0' while uvicorn listened on another port."""
    import os
    import re
    import subprocess
    import sys
    import time

    import httpx

    log_path = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "llm_embedder", "serve", "--model", str(tiny_embedder_dir),
                                    "--port", "0", "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                                   env=env)
    try:
        deadline = time.monotonic() + 120
        while not (match := re.search(r"serving model '\w+' \(dim \d+\) on (http://127\.0\.0\.1:(\d+))\n",
                                      log_path.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert int(match.group(2)) != 0, log_path.read_text()
        assert httpx.get(f"{match.group(1)}/health", timeout=10).status_code == 200  # it listens where it says
    finally:
        process.terminate()
        process.wait(timeout=20)
