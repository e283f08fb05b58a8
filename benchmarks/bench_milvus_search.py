"""Milvus Lite single-query search through ``MilvusIndex.search``: the old path (a count(*) query before every
search) against the current one (a count only where the answer leaves a doubt), in the same process and run.

An N x DIM Flat collection of random unit vectors is written, then closed and reopened (as a served index is: its
rows sealed); each round searches the same Q queries (k=10, once without a filter and once with a text filter) by
each path, the paths interleaved (old new, new old, ...), each path's best round counting. Both paths must return
the same ids. The old path is kept here as it was (``old_search``): the count, then the search it did.

    python benchmarks/bench_milvus_search.py [--n 20000] [--queries 20] [--rounds 5] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine_info, positive_int, ratio, time_interleaved, write_json  # noqa: E402

DIM = 64
K = 10


def old_search(index, vectors: np.ndarray, k: int, filter: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``MilvusIndex.search`` as it was (before a search ran no count): count(*) first, the limit min(k, count)."""
    from llm_embedder.index.base import EmptyIndexError, check_filter, check_k, check_vectors, matches, pad_results
    from llm_embedder.index.milvus_index import MAX_LIMIT, _search_params, is_lite, milvus_condition

    queries = check_vectors(vectors, index.dim, "query vectors")
    k = check_k(k)
    conditions = check_filter(filter)
    index_type, kind = index._index_type(), f"Milvus index {index.factory!r}"
    count = index.count
    if count == 0:
        raise EmptyIndexError("the index is empty: add vectors before searching")
    expr = " and ".join(milvus_condition(f, v) for f, v in conditions.items()) if conditions else ""
    lite = is_lite(index.uri)
    limit = min(k, count)
    strict = conditions if conditions and any(not isinstance(v, str) for vs in conditions.values() for v in vs) \
        else None
    fields = ["id", *sorted(strict or ())]
    rows: list[list[tuple[float, int]]] = [[] for _ in range(len(queries))]
    pending = list(range(len(queries)))
    while pending:
        params = _search_params(index_type, {}, limit, kind)
        result = index._call(index.client.search, index.collection, data=queries[pending].tolist(), limit=limit,
                             filter=expr, output_fields=fields, search_params=params)
        short = []
        for i, hits in zip(pending, result, strict=True):
            rows[i] = [(float(h["distance"]), int(h["id"])) for h in hits
                       if strict is None or matches(h["entity"], strict)]
            if len(rows[i]) < k and len(hits) == limit:
                short.append(i)
        wider = min(limit * 4, count if lite else min(count, MAX_LIMIT))
        pending, limit = (short, wider) if wider > limit else ([], limit)
    return pad_results(rows, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=positive_int, default=None, help="rows (default 20000; --quick 5000)")
    parser.add_argument("--queries", type=positive_int, default=None, help="queries per round (default 20; quick 10)")
    parser.add_argument("--rounds", type=positive_int, default=None, help="interleaved rounds (default 5; quick 3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    n = args.n or (5000 if args.quick else 20000)
    nq = args.queries or (10 if args.quick else 20)
    rounds = args.rounds or (3 if args.quick else 5)

    from llm_embedder.index import MilvusIndex, open_index

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    queries = rng.standard_normal((nq, DIM), dtype=np.float32)
    meta = [{"lang": ("en", "fr", "de")[i % 3]} for i in range(n)]
    report: dict = {"n": n, "dim": DIM, "k": K, "queries": nq, "rounds": rounds, "machine": machine_info()}
    with tempfile.TemporaryDirectory() as tmp:
        index = open_index(Path(tmp) / "index.db", DIM)
        for start in range(0, n, 5000):
            index.add(range(start, min(start + 5000, n)), vectors[start:start + 5000], meta[start:start + 5000])
        path = index.save(Path(tmp) / "index.milvus.json")
        index.close()
        index = MilvusIndex.load(path)  # reopened: the rows sealed, as a served index has them
        try:
            for label, filter in (("no filter", None), ("filter lang=en", {"lang": "en"})):
                for q in queries[:3]:  # the same answer by both paths
                    old, new = old_search(index, q, K, filter), index.search(q, K, filter)
                    assert old[1].tolist() == new[1].tolist(), (label, old[1], new[1])
                timed = time_interleaved({
                    "old (count + search)": lambda f=filter: [old_search(index, q, K, f) for q in queries],
                    "new (search only)": lambda f=filter: [index.search(q, K, f) for q in queries],
                }, rounds)
                old_ms = timed["old (count + search)"]["best_s"] / nq * 1000
                new_ms = timed["new (search only)"]["best_s"] / nq * 1000
                count_ms = min(_timed(lambda: index.count) for _ in range(5)) * 1000
                line = {"old_ms_per_query": round(old_ms, 2), "new_ms_per_query": round(new_ms, 2),
                        "count_query_ms": round(count_ms, 2), "speedup": ratio(old_ms, new_ms)}
                report[label] = line
                print(f"Milvus Lite, {n} rows, k={K}, {label}: old {old_ms:.2f} ms/query, new {new_ms:.2f} ms/query "
                      f"-> {line['speedup']}x (one count(*) query alone: {count_ms:.2f} ms)")
        finally:
            index.close()
    write_json(args.json, report)


def _timed(fn) -> float:
    import time

    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
