"""The default LLM's tokenizer (SmolLM2, read from its GGUF once, then cached) and 128-token chunking."""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from llm_embedder.data.sources import SOURCES

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHUNK_TOKENS = 128


def cache_root() -> Path:
    """Per-user cache folder ($LLM_EMBEDDER_CACHE, else ~/.cache/llm_embedder)."""
    env = os.environ.get("LLM_EMBEDDER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llm_embedder"


def tokenizer_dir() -> Path:
    """A saved tokenizer directory for SmolLM2, extracted from the GGUF on first use (about 9 s), atomically."""
    source = SOURCES["smollm2"]
    target = cache_root() / "tokenizers" / f"smollm2-135m-instruct-{source.version()}"
    if (target / "tokenizer.json").exists():
        return target
    from transformers import AutoTokenizer

    root = source.root()
    if not (root / GGUF_FILE).exists():
        raise FileNotFoundError(f"{root / GGUF_FILE} is missing; reinstall {source.requirement}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        AutoTokenizer.from_pretrained(str(root), gguf_file=GGUF_FILE).save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "tokenizer.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@lru_cache(maxsize=1)
def llm_tokenizer() -> Any:
    """The cached SmolLM2 tokenizer (a transformers fast tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir()))


def chunk_text(text: str, tokenizer: Any = None, size: int = CHUNK_TOKENS) -> list[str]:
    """Cut text into consecutive ``size``-token chunks (the last one may be shorter), decoded back to text."""
    tokenizer = tokenizer or llm_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i : i + size]) for i in range(0, len(ids), size)]
