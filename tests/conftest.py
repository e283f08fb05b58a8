"""Shared fixtures. Nothing here touches a hub: tiny models are built in-process from bundled tokenizers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_embedder(out: Path, hidden: int = 32, seed: int = 0) -> Path:
    """A random 2-layer BERT sentence-transformers directory (mean pooling) with MiniLM's tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from llm_embedder.models import resolve_embedder_path

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_embedder_path("minilm")))
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
