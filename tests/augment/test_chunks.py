"""ChunkMemory and chunk_text: chunks that a store can hold, continuations within one text."""

from __future__ import annotations

from pathlib import Path

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
