"""icl (in-context example retrieval): a mixed pool of demonstrations from four real tasks."""

from __future__ import annotations

import random
from dataclasses import dataclass

from llm_embedder.data.common import (
    SMALL_COUNTS,
    SPLITS,
    TRAIN_NEGATIVES,
    BuildConfig,
    Record,
    TaskData,
    number_records,
    sentences,
)
from llm_embedder.data.lexical import LexicalIndex, pick
from llm_embedder.data.qa import askable
from llm_embedder.data.sources import BFCL_ANSWERED, bfcl_items, gsm8k_problems, wiki_articles
from llm_embedder.data.tool import render_call

TASK = "icl"
N_POSITIVES = 3
QUERY_FRACTIONS = {"test": 0.10, "dev": 0.05, "train": 0.20}  # full size; the rest of each kind is the pool


@dataclass(frozen=True)
class Example:
    kind: str
    input: str
    output: str

    def text(self) -> str:
        return f"{self.input}\n{self.output}"


def examples_by_kind() -> dict[str, list[Example]]:
    """Every demonstration candidate, grouped by task kind, in source order."""
    articles = wiki_articles()
    topic = [
        Example("topic", f"Which topic is this passage about? {sentences(a.extract)[0]}", a.topic)
        for a in articles if a.topic and a.topic != "Uncategorized"
    ]
    title = [
        Example("title", f"Name the subject described as: {articles[i].description}", articles[i].title)
        for i in askable(articles)
    ]
    gsm8k = [Example("gsm8k", f"Question: {q}", f"Answer: {a}") for q, a in gsm8k_problems()]
    bfcl = [
        Example("bfcl", f"Write the function call for: {item.request}", render_call(item.ground_truth))
        for category in BFCL_ANSWERED for item in bfcl_items(category)
    ]
    return {"topic": topic, "title": title, "gsm8k": gsm8k, "bfcl": bfcl}


def _query_counts(cfg: BuildConfig, n_items: int, n_kinds: int) -> dict[str, int]:
    if cfg.size == "small":
        return {s: -(-SMALL_COUNTS[s] // n_kinds) for s in SPLITS}
    return {s: int(round(n_items * QUERY_FRACTIONS[s])) for s in SPLITS}


def build_icl(cfg: BuildConfig) -> TaskData:
    """Hold out query examples per kind; positives = 3 BM25-nearest pool demos of the same kind."""
    kinds = examples_by_kind()
    rng = cfg.rng(TASK, "split")
    pool: list[Example] = []
    queries: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for kind in sorted(kinds):
        items = list(kinds[kind])
        rng.shuffle(items)
        reserved = sum(_query_counts(BuildConfig("full"), len(items), len(kinds)).values())
        counts = _query_counts(cfg, len(items), len(kinds))
        start = 0
        for split in ("test", "dev", "train"):  # queries come from the reserved head; small takes fewer
            queries[split] += items[start : min(start + counts[split], reserved)]
            start = min(start + counts[split], reserved)
        pool += items[reserved:]  # the same pool for small and full
    seen = {e.text() for split in SPLITS for e in queries[split]}
    pool = sorted({e for e in pool if e.text() not in seen}, key=lambda e: (e.kind, e.input, e.output))
    corpus = [{"id": i, "text": e.text(), "kind": e.kind} for i, e in enumerate(pool)]
    by_kind: dict[str, list[int]] = {}
    for i, e in enumerate(pool):
        by_kind.setdefault(e.kind, []).append(i)
    index = LexicalIndex([e.text() for e in pool])
    fill_rng = cfg.rng(TASK, "fill")
    forbidden: set[int] = set()
    splits: dict[str, list[Record]] = {}
    for split in ("test", "dev", "train"):
        items = queries[split]
        rng.shuffle(items)
        if cfg.cap(split) is not None:
            items = items[: cfg.cap(split)]
        ranked = index.search([e.input for e in items], k=200)
        exclude = set(forbidden)  # dev avoids test positives; train avoids both
        records = []
        for example, hits in zip(items, ranked, strict=True):
            same = [h for h in hits if pool[h].kind == example.kind]
            other = [h for h in hits if pool[h].kind != example.kind]
            pos = pick(same, exclude, N_POSITIVES)
            pos += _random_fill(by_kind[example.kind], exclude | set(pos), N_POSITIVES - len(pos), fill_rng)
            neg = pick(other, exclude, TRAIN_NEGATIVES)
            others = [i for k, ids in sorted(by_kind.items()) if k != example.kind for i in ids]
            neg += _random_fill(others, exclude | set(neg), TRAIN_NEGATIVES - len(neg), fill_rng)
            records.append({
                "query": example.input, "task": TASK, "query_id": 0,
                "pos": [pool[i].text() for i in pos], "neg": [pool[i].text() for i in neg],
                "answers": [example.output], "pos_index": pos, "neg_index": neg, "kind": example.kind,
            })
        splits[split] = number_records(records)
        if split != "train":
            forbidden.update(i for r in records for i in r["pos_index"])
    sizes = {k: len(v) for k, v in by_kind.items()}
    return TaskData(
        task=TASK, splits=splits, corpus=corpus, sources=("wiki", "gsm8k", "bfcl"),
        how=(
            f"Pool (corpus) of {len(corpus):,} demonstrations `input\\noutput` from four real tasks: {sizes} — "
            "Wikipedia topic classification (first sentence -> topic group), description -> title, GSM8K "
            "(problem -> worked answer), BFCL (request -> gold call). Query examples are held out of the pool. "
            "Query = the input, answer = its gold output. Positives = the 3 BM25-nearest pool demos of the same "
            "kind (the right kind of example); negatives = the 7 BM25-nearest demos of other kinds; "
            "either is topped up with random demos (of the same kind, of other kinds) where BM25's top 200 hold too "
            "few. Train records "
            "never use a dev/test positive. The reward stage re-scores the candidates with the LLM."
        ),
        constructed="The input/output templates are ours; the texts and labels are the sources' own.",
    )


def _random_fill(candidates: list[int], exclude: set[int], n: int, rng: random.Random) -> list[int]:
    if n <= 0:
        return []
    free = [i for i in candidates if i not in exclude]
    return rng.sample(free, min(n, len(free)))
