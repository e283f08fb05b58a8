"""``ChunkMemory`` (task ``lrlm``): cut long text into LM-token chunks, retrieve earlier chunks for the current one."""

from __future__ import annotations

from typing import Any

from llm_embedder.augment.prompt import augment
from llm_embedder.augment.stores import _Store
from llm_embedder.index.base import check_k
from llm_embedder.retriever import Hit


def chunk_text(text: str, tokenizer: Any, chunk_tokens: int) -> list[str]:
    """Split ``text`` into pieces of ``chunk_tokens`` tokens each (the last may be shorter).

    With a fast tokenizer the pieces are slices of the original text (lossless: they concatenate back to
    it); otherwise the token ids are decoded. A piece of only whitespace (blank lines of code, with a tokenizer
    that has whitespace tokens) is joined to the piece before it (the first, to the one after), so that every
    piece has something to embed; such a piece holds more tokens. A text of only whitespace stays one piece.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    if not text:
        return []
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if not offsets:
            return [text]
        starts = [0] + [offsets[i][0] for i in range(chunk_tokens, len(offsets), chunk_tokens)]
        ends = starts[1:] + [len(text)]
        return _join_blank([text[a:b] for a, b in zip(starts, ends, strict=True) if text[a:b]])
    ids = tokenizer.encode(text, add_special_tokens=False)
    return _join_blank([tokenizer.decode(ids[i : i + chunk_tokens]) for i in range(0, len(ids), chunk_tokens)])


def _join_blank(pieces: list[str]) -> list[str]:
    """``pieces`` with each whitespace-only one joined to its neighbour (the one before, or for leading ones the
    one after): a store refuses a blank document, which would embed as the instruction alone. Lossless."""
    joined: list[str] = []
    for piece in pieces:
        if joined and (not piece.strip() or not joined[-1].strip()):
            joined[-1] += piece
        else:
            joined.append(piece)
    return joined


class ChunkMemory(_Store):
    """Long-text memory: ``add_text`` cuts a text into ``chunk_tokens``-token chunks (with ``tokenizer``, the
    LM's; default the embedder's) and ``retrieve`` finds the earlier chunks most useful for the current text.

    ``chunks[p]`` is the chunk at position ``p``; reopened from ``index_dir`` they come from the index (a chunk
    deleted from it reads as ``""``) and new texts are appended after them. Each chunk records, besides its
    ``position`` and ``source``, ``text_start``: the position of the first chunk of its text (its ``add_text``
    call), so that a continuation never runs into another text.
    """

    task = "lrlm"

    def __init__(self, embedder: Any, tokenizer: Any = None, chunk_tokens: int = 128, **kwargs: Any) -> None:
        super().__init__(embedder, **kwargs)
        tokenizer = tokenizer if tokenizer is not None else embedder.tokenizer
        # a CausalLM (what augment takes as a tokenizer) chunks with its own tokenizer
        if not hasattr(tokenizer, "encode") and hasattr(getattr(tokenizer, "tokenizer", None), "encode"):
            tokenizer = tokenizer.tokenizer
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.chunks: list[str] = []
        self._text_starts: list[int] = []  # per position, its text's first position (-1: not held, unknown)
        previous: dict | None = None
        for _, doc in self._held("position"):
            position = doc["position"]
            self.chunks.extend([""] * (position + 1 - len(self.chunks)))
            self._text_starts.extend([-1] * (position + 1 - len(self._text_starts)))
            self.chunks[position] = doc["text"]
            start = doc.get("text_start")
            if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= position:
                # written before chunks recorded their text: the one before, held and of the same source, is
                # taken for the same text
                same = previous is not None and previous["position"] == position - 1 \
                    and previous.get("source") == doc.get("source")
                start = self._text_starts[position - 1] if same else position
            self._text_starts[position] = start
            previous = doc

    def add_text(self, text: str, source: str = "") -> list[int]:
        """Chunk and store a text (appended after earlier ones); returns the chunks' positions."""
        pieces = chunk_text(text, self.tokenizer, self.chunk_tokens)
        with self.retriever.lock:  # two threads adding texts would number their chunks from the same position
            start = len(self.chunks)
            docs = [{"text": piece, "position": start + i, "source": source, "text_start": start}
                    for i, piece in enumerate(pieces)]
            self.retriever.add(docs)
            self.chunks.extend(pieces)
            self._text_starts.extend([start] * len(pieces))
        return list(range(start, start + len(pieces)))

    def retrieve(self, query: str, k: int = 8, before: int | None = None, continuation: bool = False) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (only positions < ``before`` when given), best first.

        ``continuation=True`` appends each chunk's following chunk of the same text to its text, as in the
        paper's setup (a text's last chunk gets none).
        """
        check_k(k)
        limit = min(len(self.chunks), k if before is None else k + max(0, len(self.chunks) - before))
        hits = self._search(query, max(limit, 1)) if limit else []
        if before is not None:
            hits = [h for h in hits if h.metadata["position"] < before]
        hits = hits[:k]
        if continuation:
            with self.retriever.lock:  # not halfway through another thread's add_text
                for hit in hits:
                    position = hit.metadata["position"]
                    nxt = position + 1
                    if nxt < len(self.chunks) and (before is None or nxt < before) \
                            and self._text_starts[nxt] == self._text_starts[position] != -1:
                        hit.text += self.chunks[nxt]
        return hits

    def prompt(
        self, query: str, k: int = 8, budget_tokens: int = 2048, tokenizer: Any = None, before: int | None = None
    ) -> str:
        """Retrieved chunks in document order, concatenated before ``query`` (the current text)."""
        hits = self.retrieve(query, k, before=before)
        return augment(self.task, query, hits, budget_tokens, tokenizer or self.tokenizer,
                       positions=[h.metadata["position"] for h in hits])
