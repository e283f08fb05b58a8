"""Encoding throughput: our Embedder vs plain sentence-transformers vs FlagEmbedding's FlagModel, and ONNX.

Same model (the bundled all-MiniLM-L6-v2, mean pooling), same texts (short queries: Wikipedia descriptions;
passages: Wikipedia summaries truncated to 128 tokens), same batch size, same thread count for torch and ONNX
Runtime, same instructions (task ``qa``). Timed in interleaved rounds in one process; ratios are what count.
Also checks that the vectors equal FlagModel's (max abs diff < 1e-5) and that int8 ONNX keeps NDCG@10 within
1% of fp32 on a description -> article retrieval task over the offline Wikipedia summaries.

    python benchmarks/bench_encode.py [--quick] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # FlagModel draws progress bars per call
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    CACHE_DIR,
    machine_info,
    positive_int,
    ratio,
    time_interleaved,
    wiki_articles,
    write_json,
)

MAX_LENGTH = 128
BATCH = 32
TASK = "qa"


def load_flag_model():
    """FlagEmbedding's FlagModel class. Its package __init__ imports a reranker needing transformers<5, so on
    ImportError the encoder-only module is imported directly (bypassing the package __init__ files)."""
    try:
        from FlagEmbedding import FlagModel
    except ImportError:
        FlagModel = None
    if FlagModel is None:
        spec = importlib.util.find_spec("FlagEmbedding")
        if spec is None:
            return None
        root = Path(list(spec.submodule_search_locations)[0])
        for name in ("", ".inference", ".inference.embedder", ".inference.embedder.encoder_only"):
            module = types.ModuleType("FlagEmbedding" + name)
            module.__path__ = [str(root / name[1:].replace(".", "/"))]
            sys.modules["FlagEmbedding" + name] = module
        FlagModel = importlib.import_module("FlagEmbedding.inference.embedder.encoder_only.base").BaseEmbedder
    module = sys.modules[FlagModel.__module__]
    module.tqdm = lambda iterable, **_: iterable  # it passes disable=False explicitly, so TQDM_DISABLE is ignored
    module.trange = lambda *a, **_: range(*[x for x in a if isinstance(x, int)])
    return FlagModel


def make_texts(tokenizer, n_queries: int, n_passages: int) -> tuple[list[str], list[str]]:
    """Short queries (descriptions) and passages of at least 128 tokens (so 128 after truncation)."""
    articles = wiki_articles()
    queries = [a["description"] for a in articles if a.get("description")][:n_queries]
    passages = []
    for article in articles:
        if len(tokenizer(article["extract"])["input_ids"]) > MAX_LENGTH:
            passages.append(article["extract"])
            if len(passages) == n_passages:
                break
    return queries, passages


def ensure_export(model_path: Path) -> Path:
    """The MiniLM ONNX export (fp32 + int8), made once and cached under benchmarks/results/.cache."""
    from llm_embedder.export import EXPORT_FILE, ONNX_DIR, export_onnx

    out = CACHE_DIR / "minilm-onnx"
    if not (out / ONNX_DIR / EXPORT_FILE).is_file():
        export_onnx(model_path, out, quantize="int8", overwrite=True)
    return out


def quality(embedders: dict, n_articles: int, n_queries: int) -> dict:
    """NDCG@10 per backend on description -> article retrieval (unique descriptions only), exact search."""
    from llm_embedder.evaluate.metrics import retrieval_metrics

    articles = wiki_articles()[:n_articles]
    counts: dict[str, int] = {}
    for article in articles:
        counts[article.get("description", "")] = counts.get(article.get("description", ""), 0) + 1
    picks = [i for i, a in enumerate(articles) if a.get("description") and counts[a["description"]] == 1]
    rng = np.random.default_rng(0)
    picks = sorted(rng.choice(picks, size=min(n_queries, len(picks)), replace=False).tolist())
    queries = [articles[i]["description"] for i in picks]
    keys = [a["extract"] for a in articles]
    out = {"articles": len(keys), "queries": len(queries)}
    for name, embedder in embedders.items():
        scores = embedder.encode_queries(queries, TASK, show_progress=False) @ embedder.encode_keys(
            keys, TASK, show_progress=False).T
        rankings = np.argsort(-scores, axis=1)[:, :10].tolist()
        metrics = retrieval_metrics(rankings, [[i] for i in picks], cutoffs=(10,))
        out[name] = {"ndcg@10": round(metrics["ndcg@10"], 4), "mrr@10": round(metrics["mrr@10"], 4)}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="64 queries, 32 passages, 2 timed rounds, NDCG on 80 queries (about a minute)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch and ORT intra-op threads (same for all)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="cpu: process CPU seconds (robust on a shared box); wall: best wall seconds")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from llm_embedder.embedder import Embedder
    from llm_embedder.models import resolve_embedder_path
    from llm_embedder.tasks import get_task

    torch.set_num_threads(args.threads)  # torch and ORT (which follows torch's count) get the same threads
    n_q, n_p, rounds = (64, 32, 2) if args.quick else (1024, 256, 5)
    path = resolve_embedder_path("minilm")
    q_instr, k_instr = get_task(TASK).instruction("query"), get_task(TASK).instruction("key")
    lengths = {"query_max_length": MAX_LENGTH, "key_max_length": MAX_LENGTH, "batch_size": BATCH}
    ours = Embedder("minilm", device="cpu", **lengths)
    queries, passages = make_texts(ours.tokenizer, n_q, n_p)
    st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    st.max_seq_length = MAX_LENGTH

    def st_encode(texts: list[str], prompt: str) -> np.ndarray:
        return st.encode(texts, prompt=prompt, batch_size=BATCH, normalize_embeddings=True, convert_to_numpy=True)

    systems_q = {"embedder": lambda: ours.encode_queries(queries, TASK, show_progress=False),
                 "sentence_transformers": lambda: st_encode(queries, q_instr)}
    systems_p = {"embedder": lambda: ours.encode_keys(passages, TASK), "sentence_transformers": lambda: st_encode(
        passages, k_instr)}
    checks: dict[str, float] = {}
    reference = ours.encode_keys(passages, TASK)
    flag_class = load_flag_model()
    if flag_class is not None:
        flag = flag_class(str(path), use_fp16=False, devices="cpu", pooling_method="mean", normalize_embeddings=True,
                          query_instruction_for_retrieval=q_instr, query_instruction_format="{}{}",
                          passage_instruction_for_retrieval=k_instr, batch_size=BATCH,
                          query_max_length=MAX_LENGTH, passage_max_length=MAX_LENGTH)
        systems_q["flagembedding"] = lambda: flag.encode_queries(queries)
        systems_p["flagembedding"] = lambda: flag.encode_corpus(passages)
        ours_q = ours.encode_queries(queries, TASK, show_progress=False)
        checks["max_abs_diff_vs_flagmodel_queries"] = float(np.abs(ours_q - flag.encode_queries(queries)).max())
        checks["max_abs_diff_vs_flagmodel_passages"] = float(np.abs(reference - flag.encode_corpus(passages)).max())
    else:
        print("FlagEmbedding is not installed: `pip install --no-deps 'flagembedding>=1.4,<1.5'` (make bench does)")
    export_dir = ensure_export(path)
    onnx = Embedder(export_dir, backend="onnx", **lengths)
    int8 = Embedder(export_dir, backend="onnx-int8", **lengths)
    for name, embedder in (("onnx_fp32", onnx), ("onnx_int8", int8)):
        systems_q[name] = lambda e=embedder: e.encode_queries(queries, TASK, show_progress=False)
        systems_p[name] = lambda e=embedder: e.encode_keys(passages, TASK)
    from llm_embedder.llm.fast import cpu_has_bf16

    bf16 = Embedder("minilm", device="cpu", fast="bf16", **lengths) if cpu_has_bf16() else None
    if bf16 is not None:  # bf16 Linear layers (the demo's evaluation on such CPUs); slow emulation elsewhere
        systems_q["torch_bf16_fast"] = lambda: bf16.encode_queries(queries, TASK, show_progress=False)
        systems_p["torch_bf16_fast"] = lambda: bf16.encode_keys(passages, TASK)
        checks["min_cosine_bf16_fast_vs_torch"] = float((reference * bf16.encode_keys(passages, TASK)).sum(1).min())
    else:
        print("this CPU has no bf16 matmuls (AVX512-BF16 or AMX): the bf16 fast mode is not timed")
    checks["max_abs_diff_vs_sentence_transformers"] = float(np.abs(reference - st_encode(passages, k_instr)).max())
    checks["max_abs_diff_onnx_fp32_vs_torch"] = float(np.abs(reference - onnx.encode_keys(passages, TASK)).max())
    checks["min_cosine_onnx_int8_vs_torch"] = float((reference * int8.encode_keys(passages, TASK)).sum(1).min())

    clock = "cpu_s" if args.clock == "cpu" else "best_s"
    results = {"machine": machine_info(), "threads": args.threads, "clock": args.clock, "batch_size": BATCH,
               "max_length": MAX_LENGTH,
               "n_queries": len(queries), "n_passages": len(passages), "rounds": rounds, "checks": checks}
    for label, systems, count in (("queries", systems_q, len(queries)), ("passages", systems_p, len(passages))):
        timing = time_interleaved(systems, rounds)
        base = timing["embedder"][clock]
        for t in timing.values():
            t["texts_per_s"] = round(count / t[clock], 1)
            t["embedder_speedup"] = ratio(t[clock], base)  # >1: our Embedder is faster than this system
        timing["onnx_int8"]["speedup_vs_torch"] = ratio(base, timing["onnx_int8"][clock])
        timing["onnx_fp32"]["speedup_vs_torch"] = ratio(base, timing["onnx_fp32"][clock])
        if "torch_bf16_fast" in timing:
            timing["torch_bf16_fast"]["speedup_vs_torch"] = ratio(base, timing["torch_bf16_fast"][clock])
        results[label] = timing
    n_articles, n_quality = (200, 80) if args.quick else (2000, 400)
    quality_embedders = {"torch_fp32": ours, "onnx_int8": int8}
    if not args.quick:
        quality_embedders["onnx_fp32"] = onnx
    if bf16 is not None:
        quality_embedders["torch_bf16_fast"] = bf16
    results["quality"] = quality(quality_embedders, n_articles, n_quality)
    fp32, q8 = results["quality"]["torch_fp32"]["ndcg@10"], results["quality"]["onnx_int8"]["ndcg@10"]
    results["quality"]["int8_ndcg_rel_drop"] = round((fp32 - q8) / fp32, 4) if fp32 else 0.0
    results["claims"] = claims(results)
    report(results)
    write_json(args.json, results)
    return results


def claims(results: dict) -> dict:
    """The issue's targets, each computed from this run's figures (worst of queries and passages)."""
    worst = {name: min(results[label][name]["embedder_speedup"] for label in ("queries", "passages"))
             for name in results["queries"]}
    out = {"embedder_vs_sentence_transformers_x": worst["sentence_transformers"],
           "onnx_int8_vs_torch_x": min(results[label]["onnx_int8"]["speedup_vs_torch"] for label in ("queries",
                                                                                                     "passages")),
           "int8_ndcg_within_1pct": results["quality"]["int8_ndcg_rel_drop"] <= 0.01}
    if "torch_bf16_fast" in worst:
        out["bf16_fast_vs_torch_x"] = min(results[label]["torch_bf16_fast"]["speedup_vs_torch"]
                                          for label in ("queries", "passages"))
    if "flagembedding" in worst:
        out["embedder_vs_flagembedding_x"] = worst["flagembedding"]
        checks = results["checks"]
        out["same_vectors_as_flagmodel"] = max(checks["max_abs_diff_vs_flagmodel_queries"],
                                               checks["max_abs_diff_vs_flagmodel_passages"]) < 1e-5
    return out


def report(results: dict) -> None:
    m = results["machine"]
    print(f"encode benchmark: {m['cpu']} x{m['nproc']}, {results['threads']} threads, load {m['loadavg_1m']}, "
          f"batch {results['batch_size']}, max {results['max_length']} tokens, {results['clock']} clock")
    for label in ("queries", "passages"):
        n = results[f"n_{label}"]
        print(f"  {label} ({n} texts, best of {results['rounds']} interleaved rounds):")
        for name, t in results[label].items():
            extra = f"  ({t['speedup_vs_torch']}x torch)" if "speedup_vs_torch" in t else ""
            print(f"    {name:22s} {t['texts_per_s']:8.1f}/s  Embedder is {t['embedder_speedup']:.2f}x this{extra}")
    for key, value in results["checks"].items():
        print(f"  {key}: {value:.2e}" if "diff" in key else f"  {key}: {value:.4f}")
    q = results["quality"]
    scores = ", ".join(f"{k} {v['ndcg@10']:.4f}" for k, v in q.items() if isinstance(v, dict))
    print(f"  NDCG@10 ({q['queries']} queries / {q['articles']} articles): {scores}; "
          f"int8 relative drop {q['int8_ndcg_rel_drop']:.2%}")
    print("  claims: " + ", ".join(f"{k}={v}" for k, v in results["claims"].items()))


if __name__ == "__main__":
    main()
