"""qa (knowledge retrieval): Wikipedia lead passages; queries from the articles' human-written short descriptions."""

from __future__ import annotations

from collections import Counter, defaultdict

from llm_embedder.data.common import TRAIN_NEGATIVES, BuildConfig, Record, TaskData, assign_splits, number_records
from llm_embedder.data.lexical import LexicalIndex, pick
from llm_embedder.data.sources import WikiArticle, wiki_articles

TASK = "qa"
QUESTION = "Which subject is described as: {description}?"


def wiki_corpus(articles: tuple[WikiArticle, ...]) -> list[Record]:
    """The shared passage corpus: one line per article, id = line order."""
    return [{"id": i, "title": a.title, "text": a.extract, "topic": a.topic} for i, a in enumerate(articles)]


def key_text(entry: Record) -> str:
    """A corpus entry as the retriever sees it (key template "{title} {text}")."""
    return f"{entry['title']} {entry['text']}" if entry.get("title") else entry["text"]


def askable(articles: tuple[WikiArticle, ...]) -> list[int]:
    """Articles whose description names them unambiguously and does not give the title away."""
    counts = Counter(a.description.casefold() for a in articles)
    return [
        i for i, a in enumerate(articles)
        if a.description
        and counts[a.description.casefold()] == 1
        and a.title.casefold() not in a.description.casefold()
    ]


def fill_negatives(
    ranked: list[int], exclude: set[int], n: int, same_topic: list[int], rng_choice
) -> list[int]:
    """BM25-ranked negatives, topped up with same-topic passages when BM25 finds too few."""
    chosen = pick(ranked, exclude, n)
    if len(chosen) < n:
        pool = [i for i in same_topic if i not in exclude and i not in chosen]
        chosen += rng_choice(pool, min(n - len(chosen), len(pool)))
    return chosen


def build_qa(cfg: BuildConfig) -> TaskData:
    """Split articles into test/dev/train; each query's positive is its own article, negatives are BM25 hits."""
    articles = wiki_articles()
    corpus = wiki_corpus(articles)
    keys = [key_text(entry) for entry in corpus]
    by_topic: dict[str, list[int]] = defaultdict(list)
    for i, article in enumerate(articles):
        by_topic[article.topic].append(i)

    units = askable(articles)
    split_ids = assign_splits(units, cfg.split_units(len(units)), cfg.rng(TASK, "split"))
    held_out = set(split_ids["dev"]) | set(split_ids["test"])
    index = LexicalIndex(keys)
    rng = cfg.rng(TASK, "negatives")
    splits: dict[str, list[Record]] = {}
    for split in ("test", "dev", "train"):
        ids = split_ids[split]
        ranked = index.search([articles[i].description for i in ids], k=TRAIN_NEGATIVES + 8)
        records = []
        for i, hits in zip(ids, ranked, strict=True):
            exclude = {i} | (held_out if split == "train" else set())
            neg = fill_negatives(hits, exclude, TRAIN_NEGATIVES, by_topic[articles[i].topic], rng.sample)
            records.append({
                "query": QUESTION.format(description=articles[i].description),
                "task": TASK,
                "query_id": 0,
                "pos": [keys[i]],
                "neg": [keys[j] for j in neg],
                "answers": [articles[i].title],
                "pos_index": [i],
                "neg_index": neg,
            })
        splits[split] = number_records(records)
    return TaskData(
        task=TASK,
        splits=splits,
        corpus=corpus,
        sources=("wiki",),
        how=(
            f"Corpus: all {len(corpus):,} English Wikipedia lead passages (key = \"{{title}} {{text}}\"). "
            f"Queries: the article's human-written short description as a question, "
            f"`{QUESTION}`; answer = the title; positive = that article's passage. Only the {len(units):,} "
            "articles whose description is unique and does not contain the title are asked about. Split by article. "
            f"Negatives: the top BM25 (bm25s) passages for the description, topped up with same-topic passages; "
            "train negatives never include a dev/test positive."
        ),
        constructed="The question template is ours; descriptions, titles and passages are human-written (Wikipedia).",
        stats={"askable_articles": len(units)},
    )
