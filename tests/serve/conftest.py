"""Start the real `llm-embedder serve` in a subprocess on a free loopback port and wait until it answers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

API_KEY = "test-key-0123456789"
STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    api_key: str | None
    model_id: str
    process: subprocess.Popen
    log_path: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def metrics(self) -> str:
        response = httpx.get(f"{self.url}/metrics", timeout=30)
        response.raise_for_status()
        return response.text

    @staticmethod
    def metric(text: str, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` carrying ``labels`` in a Prometheus exposition (0 when absent)."""
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
            if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
                total += float(match.group(2))
        return total


@contextmanager
def run_server(model: str | Path, log_path: Path, *args: str, api_key: str | None = API_KEY) -> Iterator[Server]:
    """Run ``python -m llm_embedder serve`` until the block ends; fails with the server's log if it never starts."""
    port = free_port()
    cmd = [sys.executable, "-m", "llm_embedder", "serve", "--model", str(model), "--port", str(port),
           "--log-level", "warning", *args]
    if api_key:
        cmd += ["--api-key", api_key]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", api_key, Path(str(model)).name, process, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer /health within {STARTUP_TIMEOUT}s:\n{server.log()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def tiny_server(tiny_embedder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server on the tiny model with an API key and small limits (8 inputs, 200 characters)."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with run_server(tiny_embedder_dir, log_path, "--max-inputs", "8", "--max-chars", "200",
                    "--max-wait-ms", "20") as server:
        yield server


@pytest.fixture(scope="session")
def start_server():
    """``start_server(model, log_path, *args, api_key=...)``: a context manager running another real server."""
    return run_server
