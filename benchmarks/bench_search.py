"""FAISS HNSW vs exact flat search on N x 384 synthetic vectors, through ``llm_embedder.index.FaissIndex``.

Data: a normalised Gaussian mixture (1024 clusters); inside a cluster the spread lies in a 32-d random
subspace plus a little isotropic noise, because real text embeddings have low intrinsic dimension (isotropic
clusters are a worst case where HNSW needs a far larger efSearch). Queries are fresh draws from the same
mixture. Ground truth: exact inner-product top-10 (batched flat search). Single-query latency is measured on
one thread as process CPU time per query, so a busy co-tenant does not inflate it; build time is wall. Then a
filtered search on 50k of the vectors (flat) against FAISS given the allowed ids beforehand. Then a one-document
``Retriever.add`` to a flat index directory of min(N, 50k) documents against one of 1k (wall time, interleaved
rounds; flat in N is 1x) and against the index save each add made before (``FaissIndex.save``, sidecar included),
plus the checkpoint that now saves the index every 10% of documents, and a load replaying the adds since it. Last,
the index search of 32 concurrent requests that the server encodes in one model batch: searched together
(``Retriever.search_vectors_many``, serve's path) against one search per request (its path before), same process.
An index's memory is its serialized size (the bytes ``faiss.write_index`` writes: the vectors or codes, the
graph and the ids, counted without keeping them), which does not depend on what the allocator reuses, as an RSS
difference does; ``peak_rss_mb`` is the process's peak.

    python benchmarks/bench_search.py [--n 1000000] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import int_at_least, machine_info, positive_int, ratio, time_interleaved, write_json  # noqa: E402

DIM = 384
CLUSTERS = 1024
LATENT = 32
K = 10


def mixture(n: int, seed: int, chunk: int = 4000) -> np.ndarray:
    """n normalised float32 vectors from the fixed mixture (centres and subspaces come from seed 0)."""
    base = np.random.default_rng(0)
    centres = base.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    bases = base.standard_normal((CLUSTERS, LATENT, DIM), dtype=np.float32) * (0.9 / np.sqrt(LATENT))
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.integers(0, CLUSTERS, m)
        z = rng.standard_normal((m, LATENT), dtype=np.float32)
        x = centres[labels] + np.einsum("nl,nld->nd", z, bases[labels])
        x += 0.1 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def index_mb(index) -> float:
    """The index's serialized size in MB (vectors or codes, graph links, ids): its data, whatever the allocator
    keeps. An RSS difference read 0 MB when the allocator reused memory freed by the previous index."""
    import faiss

    written = 0

    def count(chunk: bytes) -> int:  # counts what write_index would write, without holding a copy in memory
        nonlocal written
        written += len(chunk)
        return len(chunk)

    writer = faiss.PyCallbackIOWriter(count)
    faiss.write_index(index.index, writer)
    del writer  # flushes its buffer into count()
    return written / 2**20


def build(vectors: np.ndarray, factory: str, ef_construction: int | None = None):
    """A FaissIndex filled in chunks; returns (index, wall seconds, serialized MB)."""
    from llm_embedder.index import FaissIndex

    start = time.perf_counter()
    index = FaissIndex(DIM, factory)
    if ef_construction is not None:
        index._inner().hnsw.efConstruction = ef_construction
    step = 100_000
    for s in range(0, len(vectors), step):
        index.add(np.arange(s, min(s + step, len(vectors))), vectors[s:s + step])
    seconds = time.perf_counter() - start
    return index, seconds, index_mb(index)


def single_query_ms(index, queries: np.ndarray) -> float:
    """Mean CPU milliseconds per query, one query per call, one thread."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    start = time.process_time()
    for q in queries:
        index.search(q[None, :], K)
    faiss.omp_set_num_threads(threads)
    return (time.process_time() - start) / len(queries) * 1000


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true neighbours that were found. FAISS pads a result with id -1 when it has
    fewer than k hits; -1 is no neighbour, so it never counts as one found (nor as one to find)."""
    shares = []
    for f, t in zip(found, truth, strict=True):
        wanted = {int(i) for i in t} - {-1}
        shares.append(len(wanted & {int(i) for i in f}) / len(wanted) if wanted else 1.0)
    return float(np.mean(shares))


def set_ef(index, ef: int) -> None:
    index._inner().hnsw.efSearch = ef


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int_at_least(K, f" (k={K} neighbours per query)"), default=None,
                        help=f"vectors in the index, at least k={K} (default 1M; quick: 20k)")
    parser.add_argument("--quick", action="store_true",
                        help="20k vectors, 200 queries, efSearch 16-64, no M/efConstruction sweep (an explicit "
                             "--n / --queries is kept)")
    parser.add_argument("--queries", type=positive_int, default=None, help="default 500 (quick: 200)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (20_000 if args.quick else 1_000_000)
    n_queries = args.queries if args.queries is not None else (200 if args.quick else 500)
    results: dict = {"machine": machine_info(), "n": n, "dim": DIM, "k": K,
                     "index_mb_is": "the bytes faiss.write_index writes for each index, in MiB"}
    t0 = time.perf_counter()
    data = mixture(n, seed=1)
    queries = mixture(n_queries, seed=2)
    print(f"search benchmark: {n} x {DIM} mixture generated in {time.perf_counter() - t0:.0f}s", flush=True)

    flat, flat_build, flat_mb = build(data, "Flat")
    start = time.perf_counter()
    _, truth = flat.search(queries, K)
    results["flat"] = {"build_s": round(flat_build, 1), "index_mb": round(flat_mb, 1),
                       "batched_ms_per_query": round((time.perf_counter() - start) / len(queries) * 1000, 3),
                       "single_query_ms": round(single_query_ms(flat, queries[:20]), 2)}
    del flat
    print(f"  flat: single query {results['flat']['single_query_ms']} ms, index {flat_mb:.1f} MB serialized",
          flush=True)

    if not args.quick:  # choose M / efConstruction on a 100k slice (each 1M build takes many minutes here)
        slice_n = min(100_000, n)
        sub_truth = exact_topk(data[:slice_n], queries)
        sweep = []
        for m in (16, 32):
            for efc in (40, 80):
                index, secs, mb = build(data[:slice_n], f"HNSW{m}", efc)
                row = {"M": m, "efConstruction": efc, "build_s": round(secs, 1), "index_mb": round(mb, 1)}
                for ef in (32, 64):
                    set_ef(index, ef)
                    row[f"recall@10_ef{ef}"] = round(recall_at_k(index.search(queries, K)[1], sub_truth), 4)
                sweep.append(row)
                print(f"  sweep {slice_n}: {row}", flush=True)
        results["sweep"] = {"n": slice_n, "rows": sweep}
    m = 32  # efConstruction / efSearch: the FaissIndex defaults, chosen from this benchmark's sweep
    index, secs, mb = build(data, f"HNSW{m}")
    efc = index._inner().hnsw.efConstruction
    results["hnsw"] = {"factory": f"HNSW{m}", "efConstruction": efc, "build_s": round(secs, 1),
                       "index_mb": round(mb, 1), "efSearch": []}
    print(f"  HNSW{m} efC={efc}: built in {secs:.0f}s, index {mb:.1f} MB serialized (flat: {flat_mb:.1f} MB)",
          flush=True)
    for ef in (16, 32, 64) if args.quick else (16, 32, 64, 128, 256):
        set_ef(index, ef)
        rec = recall_at_k(index.search(queries, K)[1], truth)
        ms = single_query_ms(index, queries[:200])
        row = {"efSearch": ef, "recall@10": round(rec, 4), "single_query_ms": round(ms, 3),
               "speedup_vs_flat": ratio(results["flat"]["single_query_ms"], ms)}
        results["hnsw"]["efSearch"].append(row)
        print(f"    efSearch {ef:3d}: recall@10 {rec:.4f}, {ms:.3f} ms/query, {row['speedup_vs_flat']}x flat",
              flush=True)
    good = [r for r in results["hnsw"]["efSearch"] if r["recall@10"] >= 0.95 and r["speedup_vs_flat"] >= 50]
    results["chosen"] = good[0] if good else None
    print(f"  smallest efSearch meeting recall@10 >= 0.95 and >= 50x: {results['chosen']}")
    results["filtered"] = filtered_search(data[:50_000], queries[:20])
    results["add"] = incremental_add(min(n, 50_000), rounds=20)
    results["batched_requests"] = batched_requests(min(n, 50_000), queries, rounds=3 if args.quick else 10)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    write_json(args.json, results)
    return results


def filtered_search(data: np.ndarray, queries: np.ndarray, rounds: int = 3) -> dict:
    """A filtered search (one of 30 years, 1/30 of the documents) on a flat index through ``FaissIndex`` against
    the same search with FAISS's selector of the allowed ids made beforehand (the least a filter can cost), single
    queries, interleaved rounds of process CPU time."""
    import faiss

    from llm_embedder.index import FaissIndex

    n = len(data)
    flat = FaissIndex(DIM, "Flat")
    flat.add(np.arange(n), data, metadata=[{"year": 1990 + i % 30} for i in range(n)])
    flat.search(queries[:1], K, filter={"year": 1990})  # the first filter on a field maps its values once
    allowed = faiss.IDSelectorBatch(np.arange(0, n, 30, dtype=np.int64))
    params = faiss.SearchParameters(sel=allowed)
    ours = raw = 0.0
    for _ in range(rounds):
        for query in queries:
            start = time.process_time()
            flat.search(query[None], K, filter={"year": 1990})
            ours += time.process_time() - start
            start = time.process_time()
            flat.index.search(query[None], K, params=params)
            raw += time.process_time() - start
    calls = rounds * len(queries)
    row = {"ms_per_query": round(ours / calls * 1000, 3), "prebuilt_selector_ms": round(raw / calls * 1000, 3),
           "ratio_to_prebuilt": ratio(ours, raw)}
    print(f"  filtered search (1 of 30 values, {n} docs): {row['ms_per_query']} ms/query, "
          f"{row['ratio_to_prebuilt']}x FAISS with a selector made beforehand", flush=True)
    return row


class RandomKeys:
    """A stand-in embedder for the add benchmark: a fixed random unit vector per text (the benchmark times an index
    directory's writes, not a model)."""

    def __init__(self, folder: Path) -> None:
        self.name, self.path, self.dim, self.key_max_length = "random-keys", str(folder), DIM, None

    def instruction(self, task: str, side: str) -> str:
        return ""

    def encode_keys(self, texts: list[str], task: str, **options) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32("\n".join(texts).encode()))
        vectors = rng.standard_normal((len(texts), DIM), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def incremental_add(big: int, rounds: int) -> dict:
    """One-document ``Retriever.add`` calls (ConversationMemory's way: text and a turn number, a filter field) on a
    flat index directory of ``big`` documents and on one of ``small`` (1k, or big/10 when smaller), in interleaved
    rounds of wall time, against ``FaissIndex.save`` of the big index (what each add wrote before it was journaled).
    Then the checkpoint a big index's adds now pay every CHECKPOINT_SHARE of documents, and its load with the
    longest tail before one against its load once saved."""
    import llm_embedder.retriever as module
    from llm_embedder.retriever import Retriever

    small = min(1_000, max(10, big // 10))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        embedder = RandomKeys(root)
        made = {size: Retriever.build(embedder, "chat", [{"text": f"turn {i}", "turn": i} for i in range(size)],
                                      out_dir=root / f"idx{size}", batch_size=4096) for size in (small, big)}
        turns = iter(range(big, big + 10 * rounds + 10))

        def add(retriever: Retriever):
            return lambda: retriever.add([{"text": f"turn {(t := next(turns))}", "turn": t}])

        timed = time_interleaved({"small": add(made[small]), "big": add(made[big]),
                                  "save": lambda: made[big].index.save(root / "copy.faiss")}, rounds)
        every = int(max(module.CHECKPOINT_ROWS, module.CHECKPOINT_SHARE * big))
        start = time.perf_counter()
        made[big].save()
        checkpoint = time.perf_counter() - start
        made[big].add([{"text": f"tail {i}", "turn": -1 - i} for i in range(every - 1)])  # just short of one
        loads = time_interleaved({"tail": lambda: Retriever.load(root / f"idx{big}", embedder)}, 2, warm=False)
        made[big].save()
        loads.update(time_interleaved({"saved": lambda: Retriever.load(root / f"idx{big}", embedder)}, 2, warm=False))
    row = {"docs": big, "small_docs": small, "rounds": rounds,
           "add_ms": round(timed["big"]["best_s"] * 1000, 3), "add_small_ms": round(timed["small"]["best_s"] * 1000, 3),
           "add_median_ms": round(timed["big"]["median_s"] * 1000, 3),
           "save_per_add_ms": round(timed["save"]["best_s"] * 1000, 3),
           "ratio_to_small": ratio(timed["big"]["best_s"], timed["small"]["best_s"]),
           "save_per_add_to_add": ratio(timed["save"]["best_s"], timed["big"]["best_s"]),
           "checkpoint_ms": round(checkpoint * 1000, 1), "checkpoint_every": every,
           "checkpoint_ms_per_add": round(checkpoint * 1000 / every, 3),
           "load_with_tail_s": loads["tail"]["best_s"], "load_saved_s": loads["saved"]["best_s"]}
    print(f"  add of 1 document to an index directory: {row['add_ms']} ms at {big} documents, {row['add_small_ms']} "
          f"ms at {small} ({row['ratio_to_small']}x); the save each add made before: {row['save_per_add_ms']} ms "
          f"({row['save_per_add_to_add']}x the add); a checkpoint {row['checkpoint_ms']} ms every {every} adds "
          f"({row['checkpoint_ms_per_add']} ms an add); load {row['load_with_tail_s']} s with {every - 1} adds past "
          f"the checkpoint, {row['load_saved_s']} s saved", flush=True)
    return row


def batched_requests(n: int, queries: np.ndarray, rounds: int, requests: int = 32) -> dict:
    """The server's index search of a model batch's ``requests`` (one query each, k 5 or 10, no filter): one
    ``Retriever.search_vectors_many`` call (what serve does now) against ``search_vectors`` per request (what it did
    before), on a Retriever of ``n`` documents, flat and HNSW32 (whose requests share a search per k), in
    interleaved rounds; wall time with FAISS's threads, and process CPU time (work, whatever the threads)."""
    from llm_embedder.retriever import Retriever

    rows = queries[:requests] if len(queries) >= requests else np.resize(queries, (requests, DIM))
    batch = [(rows[i : i + 1], {"k": 5 if i % 2 else 10}) for i in range(requests)]
    out: dict = {"docs": n, "requests": requests, "rounds": rounds}
    with tempfile.TemporaryDirectory() as tmp:
        embedder = RandomKeys(Path(tmp))
        docs = [f"document {i}" for i in range(n)]
        for factory in ("Flat", "HNSW32"):
            retriever = Retriever.build(embedder, "qa", docs, factory=factory, batch_size=4096)
            one_by_one = [retriever.search_vectors(v, **options) for v, options in batch]
            together = retriever.search_vectors_many(batch)
            same = [[[h.id for h in row] for row in r] for r in together] == [
                [[h.id for h in row] for row in r] for r in one_by_one]
            timed = time_interleaved({
                "per_request": lambda r=retriever: [r.search_vectors(v, **options) for v, options in batch],
                "batched": lambda r=retriever: r.search_vectors_many(batch)}, rounds)
            row = {"per_request_ms": round(timed["per_request"]["best_s"] * 1000, 2),
                   "batched_ms": round(timed["batched"]["best_s"] * 1000, 2),
                   "wall_ratio": ratio(timed["per_request"]["best_s"], timed["batched"]["best_s"]),
                   "cpu_ratio": ratio(timed["per_request"]["cpu_s"], timed["batched"]["cpu_s"]), "same_hits": same}
            out[factory] = row
            print(f"  index search of {requests} concurrent requests (1 query, k 5/10) on {factory}, {n} docs: "
                  f"{row['batched_ms']} ms in one search_vectors_many, {row['per_request_ms']} ms one request at a "
                  f"time; ratio {row['wall_ratio']}x wall, {row['cpu_ratio']}x CPU; same hits: {same}", flush=True)
            del retriever
    return out


def exact_topk(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-k ids by inner product (one GEMM per query block)."""
    scores = queries @ data.T
    return np.argsort(-scores, axis=1)[:, :K]


if __name__ == "__main__":
    main()
