"""The evaluation's LLM scores: batched with other prompts vs each prompt alone (``EVAL_BATCH_TOKENS``).

Prompts are those of the evaluation (``downstream.build_prompts``) for the first test queries of the small task
suite's qa (3 passages) and icl (8 examples) tasks, each filled with the query's gold item and its listed
negatives; the gold answer is scored. For each way of batching it prints:

- the time of scoring all prompts (interleaved rounds, best wall time) and the ratio alone / batched;
- how far a prompt's score moves when it is scored again beside other prompts (every other prompt dropped):
  max |difference| and how many of the re-scored prompts changed at all.

    python benchmarks/bench_eval_scores.py [--queries 40] [--fast bf16|none] [--data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CACHE_DIR, machine_info, positive_int, ratio, time_interleaved, write_json  # noqa: E402


def eval_prompts(data: Path, n_queries: int) -> tuple[list[str], list[str]]:
    """qa and icl prompts of the first ``n_queries`` test queries each, and their gold answers."""
    from llm_embedder.evaluate.downstream import DOWNSTREAM, build_prompts
    from llm_embedder.io import read_jsonl

    prompts, golds = [], []
    for task, items in (("qa", 3), ("icl", 8)):
        records = read_jsonl(data / task / "test.jsonl")[:n_queries]
        retrieved = [(r.get("pos") or [])[:1] + (r.get("neg") or [])[: items - 1] for r in records]
        prompts += build_prompts(task, [r["query"] for r in records], retrieved, replace(DOWNSTREAM[task], items=items))
        golds += [r["answers"][0] for r in records]
    return prompts, golds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=positive_int, default=40, help="test queries per task (qa, icl)")
    parser.add_argument("--fast", default="auto", help="the LLM's fast mode: bf16, none, or auto (the demo's)")
    parser.add_argument("--data", type=Path, help="a built task suite (default: the small suite, built once)")
    parser.add_argument("--rounds", type=positive_int, default=2, help="interleaved timing rounds")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    from llm_embedder.data.suite import build_suite
    from llm_embedder.evaluate.downstream import EVAL_BATCH_TOKENS
    from llm_embedder.llm import CausalLM
    from llm_embedder.pipeline import default_cpu_fast

    data = args.data or CACHE_DIR / "suite-small"
    if not (data / "qa" / "test.jsonl").exists():
        build_suite(data, size="small", seed=0)
    fast = default_cpu_fast() if args.fast == "auto" else (None if args.fast == "none" else args.fast)
    lm = CausalLM("smollm2", fast=fast)
    prompts, golds = eval_prompts(data, args.queries)
    ways = {"batched": None, "alone": EVAL_BATCH_TOKENS}
    timings = time_interleaved(
        {name: (lambda b=batch: lm.answer_logprob(prompts, golds, batch_tokens=b)) for name, batch in ways.items()},
        args.rounds,
    )
    kept = list(range(0, len(prompts), 2))
    moved = {}
    for name, batch in ways.items():
        full = np.asarray(lm.answer_logprob(prompts, golds, batch_tokens=batch))
        again = np.asarray(lm.answer_logprob([prompts[i] for i in kept], [golds[i] for i in kept], batch_tokens=batch))
        diff = np.abs(full[kept] - again)
        moved[name] = {"max_abs_diff": float(diff.max()), "changed": int((diff > 0).sum()), "rescored": len(kept)}
    slowdown = ratio(timings["alone"]["best_s"], timings["batched"]["best_s"])
    for name in ways:
        print(f"{name:8s} {timings[name]['best_s']:7.2f} s for {len(prompts)} prompts; scored again beside others: "
              f"max |diff| {moved[name]['max_abs_diff']:.4f} nats, {moved[name]['changed']}/{len(kept)} changed")
    print(f"fast mode {fast or 'exact'}: alone takes {slowdown:.2f}x the batched time")
    write_json(args.json, {"machine": machine_info(), "fast": fast, "prompts": len(prompts), "timings": timings,
                           "moved": moved, "alone_over_batched": slowdown})


if __name__ == "__main__":
    main()
