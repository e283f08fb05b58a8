"""Shared fixtures. Nothing here touches a hub: tiny models are built in-process from bundled tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_embedder(out: Path, hidden: int = 32, seed: int = 0, tokenizer_dir: str | Path | None = None) -> Path:
    """A random 2-layer BERT sentence-transformers directory (mean pooling) with MiniLM's tokenizer (or the one in
    ``tokenizer_dir``, where the MiniLM package is not installed)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llm_embedder.models import resolve_embedder_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir or resolve_embedder_path("minilm")))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=512,
    )
    hf_dir = out / "hf"
    BertModel(config, add_pooling_layer=False).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = models.Transformer(str(hf_dir), max_seq_length=256)
    pooling = models.Pooling(hidden, pooling_mode="mean")
    st_dir = out / "st"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(st_dir))
    return st_dir


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random sentence-transformers model (seconds to build, no downloads)."""
    return build_tiny_embedder(tmp_path_factory.mktemp("tiny_embedder"))


@pytest.fixture(scope="session")
def tiny_embedder(tiny_embedder_dir: Path):
    from llm_embedder.embedder import Embedder

    return Embedder(tiny_embedder_dir, device="cpu")


@pytest.fixture(scope="session")
def minilm():
    """The real bundled MiniLM (integration tests)."""
    from llm_embedder.embedder import Embedder

    return Embedder("minilm", device="cpu")


TINY_LM_CORPUS = [
    "Knowledge: Paris is the capital of France.\n\nQuestion: What is the capital of France?\n\nAnswer: Paris",
    "Speaker 1: hello there, how are you?\nSpeaker 2: fine, thanks. The weather is nice today.",
    "The quick brown fox jumps over the lazy dog. Jupiter is the largest planet in the solar system.",
    "def add(a, b): return a + b  # tools, calls, requests and answers 0123456789",
]


def build_tiny_causal_lm(out: Path, seed: int = 0, max_positions: int = 256) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer trained in-process (no downloads, ~1 s)."""
    import torch
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TINY_LM_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a larger init spreads the scores, so rank comparisons are meaningful
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny random causal LM directory (Llama, 256-token window)."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir: Path):
    from llm_embedder.llm import CausalLM

    return CausalLM(tiny_lm_dir, device="cpu")


@pytest.fixture
def milvus_server(tmp_path: Path):
    """A real Milvus gRPC server on loopback (``milvus-lite server``), as ``(uri, process)``: a test may stop the
    process to see what a client does when its server goes away. Stopped at the end in any case."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Path(sys.executable).parent / "milvus-lite"
    process = subprocess.Popen([str(server), "server", "--data-dir", str(tmp_path / "milvus-data"), "--host",
                                "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-lite server did not start (exit code {process.poll()})") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.kill()
        process.wait()
