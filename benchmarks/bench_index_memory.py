"""Peak memory of indexing N short passages through the real streaming path (``llm_embedder.index.build``).

The corpus is streamed from a generator (never a list), encoded batch by batch into the float32 memmap, then
added to a FAISS index in chunks and saved. Encoding 1M texts with MiniLM on 2 CPU cores would take hours,
so the embedder is a random sentence-transformers BERT built in-process like tests/conftest.py does, with a
384-d hidden size (so vectors are 384-d, as MiniLM's) and no transformer layers: tokenization, embedding,
pooling, normalisation, the memmap and the index are all real, only the per-token FLOPs are missing, and
those do not change memory. Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of a child process
that does nothing but the build (file pages of the memmap that stay mapped count too).

The default index is ``SQ8`` (1M x 384 in 384 MB): a ``Flat`` index of 1M x 384 float32 is 1.5 GB by itself,
so with torch and transformers loaded (~550 MB of imports) it cannot stay under 2 GB whatever the build does.
The batch size is the ``llm-embedder index`` default (256 texts).

    python benchmarks/bench_index_memory.py [--n 1000000] [--quick] [--factory SQ8] [--batch-size 256] [--json f]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, positive_int, write_json  # noqa: E402

LIMIT_MB = 2048
DIM = 384  # the random embedder's hidden size (MiniLM's)
WORDS = ("retrieval augmented language model memory tool search answer question passage dense vector index "
         "embedding instruction task reward teacher student contrastive distillation chat history").split()


def passages(n: int):
    """A streamed synthetic corpus of short passages (8-16 words), deterministic."""
    import random

    rng = random.Random(0)
    for i in range(n):
        yield {"text": f"passage {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(8, 16)))}


def child(n: int, factory: str, work: Path, batch_size: int = 256) -> dict:
    """Runs in the subprocess: build the tiny embedder, index the corpus, report peak RSS."""
    import resource

    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llm_embedder.embedder import Embedder
    from llm_embedder.index.build import build_index
    from llm_embedder.models import resolve_embedder_path

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_embedder_path("minilm")))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=DIM, num_hidden_layers=0, num_attention_heads=1,
                        intermediate_size=DIM, max_position_embeddings=512)
    BertModel(config, add_pooling_layer=False).save_pretrained(work / "hf")
    tokenizer.save_pretrained(work / "hf")
    st = SentenceTransformer(modules=[models.Transformer(str(work / "hf"), max_seq_length=64),
                                      models.Pooling(DIM, pooling_mode="mean")], device="cpu")
    st.save(str(work / "st"))
    embedder = Embedder(work / "st", device="cpu", key_max_length=64)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    meta = build_index(passages(n), work / "index", embedder, "qa", factory=factory, batch_size=batch_size,
                       progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n": n, "factory": factory, "batch_size": batch_size, "count": meta.get("count", n), "dim": embedder.dim,
            "seconds": round(seconds),
            "peak_rss_mb": round(peak_mb), "rss_before_build_mb": round(baseline_mb),
            "index_file_mb": round((work / "index" / "index.faiss").stat().st_size / 2**20)}


def check_factory(parser: argparse.ArgumentParser, factory: str) -> None:
    """Refuse a factory string FAISS cannot parse (for 384-d vectors) in one line, before the child starts."""
    from llm_embedder.index.faiss_index import FaissIndex

    try:
        FaissIndex(DIM, factory).close()  # an empty index: parses the string, allocates nothing
    except ValueError as err:
        parser.error(f"argument --factory: {err}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=None, help="passages (default 1M; quick: 10k)")
    parser.add_argument("--quick", action="store_true", help="10k passages (an explicit --n is kept)")
    parser.add_argument("--factory", default="SQ8", help="FAISS factory of the index that is built")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="texts per encoding batch")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    n = args.n if args.n is not None else (10_000 if args.quick else 1_000_000)
    if not args.child:
        check_factory(parser, args.factory)
    if args.child:
        print(json.dumps(child(n, args.factory, Path(args.child), args.batch_size)))
        return {}
    with tempfile.TemporaryDirectory(prefix="bench_index_memory_") as work:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, __file__, "--n", str(n), "--factory", args.factory, "--batch-size", str(args.batch_size),
               "--child", work]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["(no output)"]
            raise SystemExit(f"index build failed (child exit {proc.returncode}): {lines[-1]}\n"
                             "--- the child's stderr, last 3000 characters:\n" + proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["machine"] = machine_info()
    result["limit_mb"] = LIMIT_MB
    result["under_limit"] = result["peak_rss_mb"] < LIMIT_MB
    print(f"index memory: {result['count']} passages -> {args.factory} ({result['dim']}-d, batch {args.batch_size}) "
          f"in {result['seconds']}s, "
          f"peak RSS {result['peak_rss_mb']} MB (before build {result['rss_before_build_mb']} MB; "
          f"index file {result['index_file_mb']} MB); limit {LIMIT_MB} MB: "
          f"{'ok' if result['under_limit'] else 'OVER'}")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
