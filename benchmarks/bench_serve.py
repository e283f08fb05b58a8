"""Serving throughput: dynamic batching vs one-request-at-a-time encoding, same model, same load, same run.

Builds a small qa index of the bundled demo passages, starts `llm-embedder serve --index docs=...` twice on
loopback (default flags, and `--max-batch-requests 1`), then drives each with N concurrent clients (asyncio +
httpx), one text per request, on each route of ``--routes``: `/v1/embeddings` (the text as input) and
`/v1/search` (the text as one query, k 5), bounded by a request count and a time limit per mode and route. The
modes take turns: the budget is split into ``--rounds`` rounds (default 2), the order rotating each round (batched,
one-at-a-time; then one-at-a-time, batched; ...), so a co-tenant's load falls on both alike; a mode's figures are
summed over its rounds. Prints requests/s, p50/p99 latency, errors and the mean batch size the server reports, and
one throughput ratio per route last. Exit code 1 if any request failed.

    python benchmarks/bench_serve.py               # MiniLM, 32 clients
    python benchmarks/bench_serve.py --quick       # under a minute
    python benchmarks/bench_serve.py --model tiny  # a random 2-layer model (measures the server, not the model)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import positive_float, positive_int  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
MODES = {"batched": [], "one-at-a-time": ["--max-batch-requests", "1"]}
ROUTES = ("embeddings", "search")
SEARCH_K = 5


@dataclass
class Result:
    mode: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    merged: float  # requests the server put into model batches during the timed run
    batches: float  # and how many batches those were

    @property
    def mean_batch(self) -> float:
        return self.merged / max(self.batches, 1.0)

    def __add__(self, other: Result) -> Result:  # one mode's rounds, summed
        return Result(self.mode, self.requests + other.requests, self.errors + other.errors,
                      self.seconds + other.seconds, self.latencies + other.latencies, self.merged + other.merged,
                      self.batches + other.batches)

    @property
    def throughput(self) -> float:
        return (self.requests - self.errors) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def request_body(route: str, text: str, model_id: str) -> dict:
    """One request of ``route`` for ``text``: its embedding, or its hits in the benchmark's index."""
    if route == "search":
        return {"index": "docs", "query": text, "k": SEARCH_K}
    return {"input": text, "model": model_id}


def throughput_ratio(batched: Result, single: Result) -> str:
    """The ratio as printed; where no one-at-a-time request succeeded there is none (the exit code says why)."""
    if single.throughput <= 0:
        return "none (no one-at-a-time request succeeded)"
    return f"{batched.throughput / single.throughput:.2f}x"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def texts() -> list[str]:
    """Real short texts (queries and passages of the bundled demo corpus), cycled by the clients."""
    corpus = json.loads(resources.files("llm_embedder").joinpath("resources/demo_corpus.json").read_text("utf-8"))
    out: list[str] = []
    for task in corpus.values():
        for field in ("queries", "keys"):
            for item in task.get(field, []):
                text = item if isinstance(item, str) else item.get("text") or item.get("query") or ""
                if isinstance(text, str) and text.strip():
                    out.append(text[:500])
    return out or [f"sentence number {i} about something" for i in range(100)]


def passages() -> list[str]:
    """Every passage (key) of the bundled demo corpus, all tasks: the documents of the searched index."""
    corpus = json.loads(resources.files("llm_embedder").joinpath("resources/demo_corpus.json").read_text("utf-8"))
    return [key for task in corpus.values() for key in task.get("keys", []) if isinstance(key, str) and key.strip()]


def build_index(model: str, out: Path) -> int:
    """A flat qa index of the demo passages in ``out`` (encoded here, as `llm-embedder index` would); its size."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.retriever import Retriever

    docs = passages()
    Retriever.build(Embedder(model, device="cpu"), "qa", docs, out_dir=out)
    return len(docs)


def tiny_model_dir(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_embedder

    return build_tiny_embedder(work / "tiny")


def start(model: str, extra: list[str], log: Path, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "llm_embedder", "serve", "--model", model, "--port", str(port),
           "--log-level", "warning", "--device", "cpu", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    with log.open("wb") as handle:
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=ENV)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} did not start in {timeout}s:\n{log.read_text(errors='replace')}")


def batch_totals(url: str) -> tuple[float, float]:
    """(requests, batches) summed over the server's batch-size histogram so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = []
    for name in ("llm_embedder_batch_requests_sum", "llm_embedder_batch_requests_count"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        values.append(float(match.group(1)) if match else 0.0)
    return values[0], values[1]


async def load(url: str, model_id: str, pool: list[str], clients: int, requests: int, seconds: float,
               mode: str, warm: bool = True, route: str = "embeddings") -> Result:
    latencies: list[float] = []
    errors = 0
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client.get("/health") for _ in range(clients)))  # warm connections
        for _ in range(2 if warm else 0):  # warm the model (first calls are slow)
            await asyncio.gather(*(client.post(f"/v1/{route}", json=request_body(route, t, model_id))
                                   for t in pool[:clients]))
        batched_before = batch_totals(url)
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal issued, errors
            while issued < requests and time.perf_counter() < deadline:
                text = pool[issued % len(pool)]
                issued += 1
                t0 = time.perf_counter()
                try:
                    response = await client.post(f"/v1/{route}", json=request_body(route, text, model_id))
                    ok = response.status_code == 200 and len(response.json()["data"]) == 1
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        batched_after = batch_totals(url)
    merged, batches = (after - before for after, before in zip(batched_after, batched_before, strict=True))
    return Result(mode, issued, errors, elapsed, latencies, merged, batches)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="minilm, tiny, or a sentence-transformers directory")
    parser.add_argument("--clients", type=positive_int, default=32)
    parser.add_argument("--requests", type=positive_int, default=None,
                        help="requests per mode and route, all rounds together (default 3000, quick 600)")
    parser.add_argument("--seconds", type=positive_float, default=None,
                        help="time limit per mode and route, all rounds together (default 60, quick 12)")
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="rounds the modes take turns in, each with an equal share of the budget (default 2)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads per server (serve --threads); 1 suits a busy shared CPU")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES),
                        help="routes to load, each with the whole budget (default: embeddings search)")
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    args = parser.parse_args(argv)
    requests = args.requests if args.requests is not None else (600 if args.quick else 3000)
    seconds = args.seconds if args.seconds is not None else (12.0 if args.quick else 60.0)
    if requests < args.rounds:
        parser.error(f"--requests ({requests}) must be at least --rounds ({args.rounds}): each round needs one")
    shares = [requests // args.rounds + (1 if r < requests % args.rounds else 0) for r in range(args.rounds)]
    pool = texts()
    routes = list(dict.fromkeys(args.routes))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        work = Path(tmp)
        model = str(tiny_model_dir(work)) if args.model == "tiny" else args.model
        model_id = Path(model).name
        n_docs = build_index(model, work / "index")
        index = ["--index", f"docs={work / 'index'}"]
        servers = {
            mode: start(model, [*extra, *index], work / f"{i}.log", args.threads)
            for i, (mode, extra) in enumerate(MODES.items())
        }
        try:
            for i, (process, url) in enumerate(servers.values()):
                wait_ready(process, url, work / f"{i}.log")
            totals: dict[tuple[str, str], Result] = {}
            modes = list(servers)
            for r, share in enumerate(shares):
                for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
                    url = servers[mode][1]
                    for route in routes:
                        part = asyncio.run(load(url, model_id, pool, args.clients, share, seconds / args.rounds,
                                                mode, warm=r == 0, route=route))
                        key = (route, mode)
                        totals[key] = totals[key] + part if key in totals else part
        finally:
            for process, _ in servers.values():
                process.terminate()
            for process, _ in servers.values():
                process.wait(timeout=30)
    print(f"model {args.model}, {args.clients} concurrent clients, 1 text per request (search: 1 query, k "
          f"{SEARCH_K}, flat qa index of {n_docs} passages), loopback, {os.cpu_count()} CPUs, torch threads "
          f"{args.threads or 'default'}; load average before the run {load_before:.1f} (a shared CPU makes figures "
          f"vary from run to run); {args.rounds} interleaved rounds per mode, summed")
    print("batch = mean requests per model batch during the timed run")
    print(f"{'route':<16}{'mode':<15}{'requests':>9}{'errors':>8}{'seconds':>9}{'req/s':>9}{'p50 ms':>9}"
          f"{'p99 ms':>9}{'batch':>8}")
    for route, mode in ((route, mode) for route in routes for mode in MODES):
        r = totals[(route, mode)]
        print(f"{'/v1/' + route:<16}{r.mode:<15}{r.requests:>9}{r.errors:>8}{r.seconds:>9.1f}{r.throughput:>9.1f}"
              f"{r.percentile(50):>9.1f}{r.percentile(99):>9.1f}{r.mean_batch:>8.1f}")
    errors = sum(r.errors for r in totals.values())
    print(f"errors: {errors}")
    for route in routes:
        ratio = throughput_ratio(totals[(route, modes[0])], totals[(route, modes[1])])
        print(f"/v1/{route} throughput ratio, dynamic batching / one-at-a-time: {ratio}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
