"""ChunkMemory and chunk_text: chunks that a store can hold, continuations within one text."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llm_embedder.augment import ChunkMemory, chunk_text

CODE = "def f():\n    return 1\n" + "\n" * 12 + "def g():\n    return 2\n"


def test_a_whitespace_only_piece_is_joined_to_its_neighbour(tiny_embedder, tiny_lm_dir: Path) -> None:
    """With a tokenizer that has whitespace tokens, a chunk of blank lines was refused by the store, and with it the
    whole text ("a document's 'text' holds only whitespace"). It is joined to the chunk before it now."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_lm_dir))  # byte-level BPE: "\n\n" is a token
    for text in (CODE, "\n\n\n\n" + CODE):  # leading blank pieces go to the piece after them
        pieces = chunk_text(text, tokenizer, 2)
        assert "".join(pieces) == text and all(piece.strip() for piece in pieces)
    memory = ChunkMemory(tiny_embedder, tokenizer=tokenizer, chunk_tokens=2)
    positions = memory.add_text(CODE, source="code.py")
    assert "".join(memory.chunks) == CODE and positions == list(range(len(memory.chunks))) and len(memory) > 5
    assert chunk_text("  \n ", tokenizer, 2) == ["  \n "]  # nothing to join a blank text to


def test_a_continuation_stays_within_its_text(tiny_embedder, tmp_path: Path) -> None:
    """The next position was appended whatever text it came from: 'The launch code is 1234.' continued with the
    shopping list added after it. Each chunk records its text's first position; a text's last chunk gets nothing."""
    memory = ChunkMemory(tiny_embedder, index_dir=tmp_path / "lrlm")
    memory.add_text("The launch code is 1234.", source="a.txt")
    memory.add_text("Shopping list: eggs, milk.", source="b.txt")
    memory.add_text("Another note in b.", source="b.txt")  # the same source, another text
    texts = ["The launch code is 1234.", "Shopping list: eggs, milk.", "Another note in b."]
    hits = memory.retrieve("launch code", k=5, continuation=True)
    assert sorted(h.text for h in hits) == sorted(texts)
    assert {h.metadata["position"]: h.metadata["text_start"] for h in hits} == {0: 0, 1: 1, 2: 2}
    reopened = ChunkMemory(tiny_embedder, index_dir=tmp_path / "lrlm")
    assert sorted(h.text for h in reopened.retrieve("launch code", k=5, continuation=True)) == sorted(texts)
    first = reopened.add_text("word " * 300, source="c.txt")  # several chunks: each continues with the next one
    assert len(first) > 1 and first[0] == 3
    hits = {h.metadata["position"]: h.text for h in reopened.retrieve("word", k=len(reopened), continuation=True)}
    assert hits[first[0]] == reopened.chunks[first[0]] + reopened.chunks[first[1]]
    assert hits[first[-1]] == reopened.chunks[first[-1]] and hits[2] == texts[2]


def test_chunks_written_before_they_recorded_their_text(tiny_embedder, tmp_path: Path) -> None:
    """An index from before ``text_start``: consecutive held chunks of one source are taken for one text."""
    from llm_embedder.retriever import Retriever

    old = [{"text": "one ", "position": 0, "source": "a"}, {"text": "two", "position": 1, "source": "a"},
           {"text": "three", "position": 2, "source": "b"}]
    Retriever.build(tiny_embedder, "lrlm", old, out_dir=tmp_path / "lrlm")
    memory = ChunkMemory(tiny_embedder, index_dir=tmp_path / "lrlm")
    hits = {h.metadata["position"]: h.text for h in memory.retrieve("x", k=3, continuation=True)}
    assert hits == {0: "one two", 1: "two", 2: "three"}


def test_threads_adding_texts_get_their_own_positions(tiny_embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads in add_text numbered their chunks from the same position: both texts claimed positions 0, 1, ..."""
    memory = ChunkMemory(tiny_embedder, chunk_tokens=4)
    encode = tiny_embedder.encode_keys
    monkeypatch.setattr(tiny_embedder, "encode_keys", lambda *a, **kw: time.sleep(0.05) or encode(*a, **kw))
    texts = {"a": "the first text is about cats and their habits", "b": "the second text is about ships at sea"}
    with ThreadPoolExecutor(2) as pool:
        futures = {name: pool.submit(memory.add_text, text, source=name) for name, text in texts.items()}
    got = {name: future.result() for name, future in futures.items()}
    assert sorted(got["a"] + got["b"]) == list(range(len(memory.chunks))) == list(range(len(memory)))
    for name, positions in got.items():
        assert "".join(memory.chunks[p] for p in positions) == texts[name]
    held = {doc["position"]: doc["text"] for _, doc in memory.retriever.documents()}
    assert held == dict(enumerate(memory.chunks))


def test_chunk_memory_takes_the_llm_as_its_tokenizer(tiny_embedder, tiny_lm) -> None:
    """augment takes a CausalLM as its tokenizer; ChunkMemory failed on it ('CausalLM' has no attribute 'encode')."""
    memory = ChunkMemory(tiny_embedder, tokenizer=tiny_lm, chunk_tokens=4)
    text = "The quick brown fox jumps over the lazy dog. Jupiter is the largest planet."
    positions = memory.add_text(text)
    assert len(positions) > 1 and "".join(memory.chunks) == text
    assert memory.prompt("What is the largest planet?", k=2, tokenizer=tiny_lm).endswith("What is the largest planet?")
