"""convsearch (conversational search): constructed QReCC-style conversations over real Wikipedia passages.

Each conversation asks about one to three subjects in turn; the last question is a follow-up that names no
subject ("Tell me more about it."), so the retriever must resolve it from the conversation. The query is the
whole conversation concatenated with spaces, current question last (QReCC's format).
"""

from __future__ import annotations

from llm_embedder.data.common import (
    TRAIN_NEGATIVES,
    BuildConfig,
    Record,
    TaskData,
    number_records,
    partition,
    sentences,
)
from llm_embedder.data.lexical import LexicalIndex, pick
from llm_embedder.data.qa import key_text, wiki_corpus
from llm_embedder.data.sources import wiki_articles

TASK = "convsearch"
FIRST_QUESTIONS = ("What is {title}?", "Tell me about {title}.", "Can you explain what {title} is?")
NEXT_QUESTIONS = ("And what about {title}?", "What is {title}?", "How about {title}?")
FOLLOW_UPS_LAST = (
    "Tell me more about it.", "What else is known about it?", "Can you give me more details?",
    "Anything else worth knowing?", "What more can you say about that?",
)
FOLLOW_UPS_FIRST = (
    "Going back to the first one, what else is known about it?",
    "Returning to the first thing I asked about, can you tell me more?",
)


def build_convsearch(cfg: BuildConfig) -> TaskData:
    """Articles partitioned by split; positives = the subject the follow-up refers to; BM25 hard negatives."""
    articles = wiki_articles()
    corpus = wiki_corpus(articles)
    keys = [key_text(entry) for entry in corpus]
    usable = [i for i, a in enumerate(articles) if len(sentences(a.extract)) >= 2]
    pools = partition(usable, cfg.rng(TASK, "split"))
    rng = cfg.rng(TASK, "conversations")
    index = LexicalIndex(keys)
    held_out = set(pools["dev"]) | set(pools["test"])
    splits: dict[str, list[Record]] = {}
    for split in ("test", "dev", "train"):
        pool = pools[split]
        n = len(pool) if cfg.cap(split) is None else min(cfg.cap(split), len(pool))
        convs = []
        for i in pool[:n]:
            n_subjects = rng.choice((1, 2, 2, 3))
            others = rng.sample([j for j in pool if j != i], n_subjects - 1)
            back_to_first = n_subjects > 1 and rng.random() < 0.25
            subjects = [i, *others] if back_to_first else [*others, i]
            parts = []
            for k, j in enumerate(subjects):
                template = rng.choice(FIRST_QUESTIONS if k == 0 else NEXT_QUESTIONS)
                parts += [template.format(title=articles[j].title), sentences(articles[j].extract)[0]]
            follow_up = rng.choice(FOLLOW_UPS_FIRST if back_to_first else FOLLOW_UPS_LAST)
            convs.append((i, subjects, " ".join([*parts, follow_up]), follow_up))
        ranked = index.search([c[2] for c in convs], k=TRAIN_NEGATIVES + 12)
        records = []
        for (i, subjects, query, follow_up), hits in zip(convs, ranked, strict=True):
            exclude = {i} | (held_out if split == "train" else set())
            in_conversation = [j for j in subjects if j != i]
            neg = pick(in_conversation + hits, exclude, TRAIN_NEGATIVES)
            records.append({
                "query": query, "task": TASK, "query_id": 0,
                "pos": [keys[i]], "neg": [keys[j] for j in neg],
                "answers": [sentences(articles[i].extract)[1]], "pos_index": [i], "neg_index": neg,
                "current_question": follow_up, "turns": len(subjects) + 1,
            })
        splits[split] = number_records(records)
    return TaskData(
        task=TASK, splits=splits, corpus=corpus, sources=("wiki",),
        how=(
            f"Corpus: the same {len(corpus):,} Wikipedia lead passages as qa. Constructed conversations: one to "
            "three subjects are asked about in turn (\"What is <title>?\"), each answered with its passage's first "
            "sentence; the last question is a follow-up with a pronoun or no subject at all, referring to the "
            "latest subject (or, in a quarter of multi-subject conversations, \"the first one\"). Query = the whole "
            "conversation concatenated with spaces, current question last (QReCC format); answer = the passage's "
            "second sentence; positive = that passage. Negatives: the other subjects' passages first, then BM25 hits "
            "for the conversation. Articles are partitioned by split; train negatives never use dev/test articles."
        ),
        constructed="The conversations (questions, follow-ups, turn structure) are constructed from templates; "
        "the passages and the answer sentences are Wikipedia's.",
    )
