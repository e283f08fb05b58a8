"""A prepared check for a lent GPU (about 4 minutes on an H100): half precision vs fp32 on our own code paths.

1. Training steps/s of a bge-base-shaped encoder (BertConfig 768 hidden, 12 layers, random weights): CLS
   pooling, the recipe's loss (0.2 * contrastive + stable distillation, ``llm_embedder.train.losses``), AdamW;
   fp16 autocast with a GradScaler and bf16 autocast vs fp32.
2. Reward scores/s of a SmolLM2-135M-shaped LM (LlamaConfig 576 hidden, 30 layers, 9 heads, 3 kv heads,
   random weights) through ``llm_embedder.llm.scoring.bucketed_logprob``: bf16 vs fp32, plus how far the
   bf16 scores are from fp32.
3. Whether a score depends on its batch neighbours on the GPU (bf16, fp16, fp32), as a bf16 one does on the CPU
   (``benchmarks/bench_eval_scores.py``): every other pair scored again in batches of its own, and each pair
   alone (``EVAL_BATCH_TOKENS``), with the time of alone against batched. This decides how the evaluation
   batches its prompts on a GPU (``downstream.eval_batch_tokens``).
4. Our own code on the device, with tiny random models (the test suite's): ``train()`` (sentence-transformers'
   trainer, fp16 on CUDA) against the same run in fp32, the trained model encoding, and the LLM metric of the
   evaluation (``downstream_metrics``) batched the way ``eval_batch_tokens`` picks, against each prompt alone.

Without a CUDA device it prints why and exits 0. ``--cpu-smoke`` runs tiny shapes on the CPU (a code check).

    python benchmarks/gpu_check.py [--json out.json] [--cpu-smoke] [--checks train,reward,neighbours,code]
        [--tokenizer DIR]  (MiniLM's tokenizer files, for the tiny embedder where the MiniLM package is missing)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, write_json  # noqa: E402

BGE_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "vocab_size": 30522, "max_position_embeddings": 512}
SMOLLM2 = {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 8192,
           "tie_word_embeddings": True}
CHECKS = ("train", "reward", "neighbours", "code")
TINY_BERT = {**BGE_BASE, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
TINY_LLAMA = {**SMOLLM2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "intermediate_size": 64}


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_steps_per_s(device: str, precision: str, shape: dict, queries: int, group: int, steps: int) -> dict:
    """Steps/s of encoder training with the recipe's loss; ``precision``: fp32, fp16 (autocast + GradScaler) or
    bf16 (autocast, no scaler: bf16 has fp32's exponent range)."""
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertModel

    from llm_embedder.train.losses.contrastive import contrastive_loss
    from llm_embedder.train.losses.stable_distill import stable_distill_loss

    torch.manual_seed(0)
    model = BertModel(BertConfig(**shape), add_pooling_layer=False).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6)
    autocast_dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    q_ids = torch.randint(1000, shape["vocab_size"], (queries, 32), device=device)
    k_ids = torch.randint(1000, shape["vocab_size"], (queries * group, 128), device=device)
    teacher = torch.randn(queries, group, device=device)

    def embed(ids):
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            q, k = embed(q_ids), embed(k_ids)
            loss = 0.2 * contrastive_loss(q, k) + stable_distill_loss(q, k, teacher)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    for _ in range(3):
        loss = step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - start
    return {"steps_per_s": round(steps / seconds, 3), "final_loss": round(loss, 4), "queries": queries, "group": group}


def reward_scores_per_s(device: str, dtype_name: str, shape: dict, pairs: int, batch_tokens: int):
    """Scores/s of answer log-likelihood scoring with our kernel (random token pairs, 160-400 tokens)."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_embedder.llm.scoring import EncodedPairs, bucketed_logprob

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(device=device, dtype=dtype).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(160, 400, pairs)
    ids = [rng.integers(100, shape["vocab_size"], n).tolist() for n in lengths]
    enc = EncodedPairs(ids=ids, starts=[n - 8 for n in lengths], truncated=[False] * pairs)
    # warm-up over every batch shape: after an 8-pair warm-up bf16 timed 0.85x fp32 on an H100
    bucketed_logprob(model, enc, batch_tokens)
    seconds = float("inf")
    for _ in range(2):  # best of two passes
        sync(device)
        start = time.perf_counter()
        scores = bucketed_logprob(model, enc, batch_tokens)
        sync(device)
        seconds = min(seconds, time.perf_counter() - start)
    attention = model.config._attn_implementation
    del model
    return {"scores_per_s": round(pairs / seconds, 1), "pairs": pairs, "batch_tokens": batch_tokens,
            "attention": attention}, scores


def neighbour_check(device: str, dtype_name: str, shape: dict, pairs: int, batch_tokens: int) -> dict:
    """Scores of every other pair (64-1024 tokens): re-batched (other neighbours) and alone, against the full
    batched pass, in one dtype."""
    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_embedder.llm.scoring import EncodedPairs, bucketed_logprob

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    model = LlamaForCausalLM(LlamaConfig(**shape)).to(device=device, dtype=dtype).eval()
    rng = np.random.default_rng(1)
    lengths = rng.integers(64, 1024, pairs)
    ids = [rng.integers(100, shape["vocab_size"], n).tolist() for n in lengths]
    enc = EncodedPairs(ids=ids, starts=[n - 8 for n in lengths], truncated=[False] * pairs)
    half = EncodedPairs(ids=ids[::2], starts=enc.starts[::2], truncated=enc.truncated[::2])
    full = bucketed_logprob(model, enc, batch_tokens)[::2]
    seconds: dict[str, float] = {}
    scores: dict[str, np.ndarray] = {}
    for name, tokens in (("batched", batch_tokens), ("alone", 1), ("batched", batch_tokens), ("alone", 1)):
        sync(device)
        start = time.perf_counter()
        scores[name] = bucketed_logprob(model, half, tokens)
        sync(device)
        seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
    alone_in_full = bucketed_logprob(model, enc, 1)[::2]
    del model

    def moved(a: np.ndarray, b: np.ndarray) -> dict:
        return {"changed": int((a != b).sum()), "max_abs_diff": round(float(np.abs(a - b).max()), 4)}

    return {"pairs": len(half.ids), "batch_tokens": batch_tokens,
            "rebatched_vs_batched": moved(scores["batched"], full),
            "alone_vs_alone": moved(scores["alone"], alone_in_full),
            "alone_vs_batched": moved(scores["alone"], full),
            "seconds_batched": round(seconds["batched"], 3), "seconds_alone": round(seconds["alone"], 3),
            "alone_time_ratio": round(seconds["alone"] / seconds["batched"], 2)}


def our_code(device: str, tokenizer_dir: str | None) -> dict:
    """Train, encode and score with llm_embedder itself on ``device`` (tiny random models, seconds of work)."""
    import tempfile

    import numpy as np

    tests = Path(__file__).resolve().parents[1] / "tests"
    sys.path[:0] = [str(tests), str(tests / "train"), str(tests / "evaluate")]
    from conftest import build_tiny_causal_lm, build_tiny_embedder
    from prompt_fixtures import varied_length_qa
    from train_fixtures import write_task_file

    from llm_embedder.embedder import Embedder
    from llm_embedder.evaluate.downstream import downstream_metrics, eval_batch_tokens
    from llm_embedder.llm import CausalLM
    from llm_embedder.train.card import read_step_log
    from llm_embedder.train.config import TrainConfig
    from llm_embedder.train.trainer import train

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = build_tiny_embedder(tmp / "embedder", tokenizer_dir=tokenizer_dir)
        data = [str(write_task_file(tmp / task / "train.jsonl", task, 32, scores=task == "qa"))
                for task in ("qa", "tool")]
        losses, seconds = {}, {}
        for precision, fp16 in (("fp32", False), ("fp16", True)):
            out = tmp / f"model-{precision}"
            start = time.perf_counter()
            train(TrainConfig(data=data, out=str(out), base=str(base), max_steps=16, batch_size=4, group_size=4,
                              lr=1e-3, logging_steps=1, save_steps=8, query_max_length=32, key_max_length=32,
                              fp16=fp16, device=device))
            seconds[precision] = round(time.perf_counter() - start, 2)
            losses[precision] = [step["loss"] for step in read_step_log(out / "logs" / "steps.rank0.jsonl")]
        vectors = Embedder(tmp / "model-fp16", device=device).encode_queries(["what is the capital of France?"], "qa")
        result["train"] = {
            "steps": len(losses["fp16"]), "seconds": seconds, "first_loss": losses["fp16"][0],
            "last_loss": losses["fp16"][-1],
            "max_loss_diff_fp16_vs_fp32": round(max(abs(a - b) for a, b in zip(losses["fp16"], losses["fp32"],
                                                                                strict=True)), 4),
            "encoded_norm": round(float(np.linalg.norm(vectors[0])), 4),
        }
        lm = CausalLM(build_tiny_causal_lm(tmp / "lm"), device=device)
        queries, answers, retrieved = varied_length_qa(8)
        chosen = downstream_metrics("qa", queries, answers, retrieved, lm, generate=False).per_query
        alone = downstream_metrics("qa", queries, answers, retrieved, lm, generate=False, batch_tokens=1).per_query
        first = downstream_metrics("qa", queries[:3], answers[:3], retrieved[:3], lm, generate=False).per_query
        result["eval"] = {"llm": repr(lm), "eval_batch_tokens": eval_batch_tokens(lm),
                          "batched_equals_alone": chosen == alone, "beside_others_equals_fewer": chosen[:3] == first}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the code runs")
    parser.add_argument("--checks", default="train,reward,neighbours,code", help="which checks, comma-separated")
    parser.add_argument("--tokenizer", default=None, help="MiniLM's tokenizer dir for the tiny embedder of 'code'")
    args = parser.parse_args(argv)
    checks = set(args.checks.split(","))
    unknown = checks - set(CHECKS)
    if unknown:  # before the CUDA test: a misspelt check must not pass silently on a machine without a GPU
        parser.error(f"unknown checks {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    import numpy as np
    import torch

    if args.cpu_smoke:
        device, bert, llama, queries, group, steps, pairs, tokens = "cpu", TINY_BERT, TINY_LLAMA, 4, 2, 2, 16, 4096
    elif torch.cuda.is_available():
        device, bert, llama, queries, group, steps, pairs, tokens = "cuda", BGE_BASE, SMOLLM2, 32, 8, 20, 2048, 65536
    else:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing measured. "
              "Run it on a lent GPU machine: python benchmarks/gpu_check.py --json gpu.json")
        write_json(args.json, {"skipped": "no CUDA device", "machine": machine_info()})
        return 0
    results: dict = {"machine": machine_info(), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    if "train" in checks:
        fp32 = train_steps_per_s(device, "fp32", bert, queries, group, steps)
        fp16 = train_steps_per_s(device, "fp16" if device == "cuda" else "fp32", bert, queries, group, steps)
        bf16 = train_steps_per_s(device, "bf16", bert, queries, group, steps)
        results["train"] = {"fp32": fp32, "fp16_autocast": fp16, "bf16_autocast": bf16,
                            "fp16_speedup": round(fp16["steps_per_s"] / fp32["steps_per_s"], 2),
                            "bf16_speedup": round(bf16["steps_per_s"] / fp32["steps_per_s"], 2)}
        print(f"train (bge-base shape, {queries} queries x {group} keys): fp32 {fp32['steps_per_s']} steps/s, "
              f"fp16 autocast {fp16['steps_per_s']} steps/s ({results['train']['fp16_speedup']}x), "
              f"bf16 autocast {bf16['steps_per_s']} steps/s ({results['train']['bf16_speedup']}x); final losses "
              f"{fp32['final_loss']} / {fp16['final_loss']} / {bf16['final_loss']}", flush=True)
    if "reward" in checks:
        r32, s32 = reward_scores_per_s(device, "fp32", llama, pairs, tokens)
        rbf, sbf = reward_scores_per_s(device, "bf16", llama, pairs, tokens)
        results["reward"] = {"fp32": r32, "bf16": rbf,
                             "bf16_speedup": round(rbf["scores_per_s"] / r32["scores_per_s"], 2),
                             "bf16_max_abs_diff": round(float(np.abs(s32 - sbf).max()), 4),
                             "bf16_rank_corr": round(float(np.corrcoef(np.argsort(np.argsort(s32)),
                                                                       np.argsort(np.argsort(sbf)))[0, 1]), 4)}
        print(f"reward (SmolLM2-135M shape, {pairs} pairs): fp32 {r32['scores_per_s']} scores/s, bf16 "
              f"{rbf['scores_per_s']} scores/s ({results['reward']['bf16_speedup']}x); bf16 vs fp32 max abs diff "
              f"{results['reward']['bf16_max_abs_diff']}, rank corr {results['reward']['bf16_rank_corr']}")
    if "neighbours" in checks:
        from llm_embedder.llm.model import CUDA_BATCH_TOKENS

        results["neighbours"] = {}
        for dtype_name in ("bf16", "fp16", "fp32") if device == "cuda" else ("bf16",):
            nb = neighbour_check(device, dtype_name, llama, 2 * min(pairs, 256),
                                 CUDA_BATCH_TOKENS if device == "cuda" else tokens)
            results["neighbours"][dtype_name] = nb
            rebatched, alone = nb["rebatched_vs_batched"], nb["alone_vs_batched"]
            print(f"neighbours ({dtype_name}, {nb['pairs']} pairs): re-batched beside other pairs "
                  f"{rebatched['changed']} changed (max {rebatched['max_abs_diff']}); "
                  f"alone {nb['alone_vs_alone']['changed']} changed between passes, "
                  f"{alone['changed']} differ from batched (max {alone['max_abs_diff']}); "
                  f"alone takes {nb['alone_time_ratio']}x the batched time "
                  f"({nb['seconds_alone']} s vs {nb['seconds_batched']} s)", flush=True)
    if "code" in checks:
        results["code"] = code = our_code(device, args.tokenizer)
        trained = code["train"]
        print(f"our code on {device}: train() {trained['steps']} steps, fp16 in {trained['seconds']['fp16']} s "
              f"and fp32 in {trained['seconds']['fp32']} s, loss {trained['first_loss']:.3f} -> "
              f"{trained['last_loss']:.3f}, fp16 vs fp32 per-step losses within "
              f"{trained['max_loss_diff_fp16_vs_fp32']}; encoded norm {trained['encoded_norm']}; "
              f"evaluation with {code['eval']['llm']}: batch tokens {code['eval']['eval_batch_tokens']}, batched == "
              f"alone {code['eval']['batched_equals_alone']}, beside others == fewer "
              f"{code['eval']['beside_others_equals_fewer']}", flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
