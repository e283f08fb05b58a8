"""chat (conversation memory): constructed multi-session dialogues in which a user shares real Wikipedia facts.

No packaged multi-session chat corpus exists, so dialogues are built: Speaker 1 states facts (lead sentences of
Wikipedia articles) across several sessions mixed with small talk, and in the last session asks about one of them
by its human-written description. The history turns are the candidates; the reply naming the subject is the answer.
"""

from __future__ import annotations

import random
from collections import defaultdict

from llm_embedder.data.common import BuildConfig, Record, TaskData, lower_first, number_records, partition, sentences
from llm_embedder.data.qa import askable
from llm_embedder.data.sources import WikiArticle, wiki_articles

TASK = "chat"
TURNS = {"train": (10, 18), "dev": (10, 18), "test": (20, 30)}  # MSC: ~14 train, ~27 test history turns
OPENERS = (
    "I read something interesting today.", "Guess what I learned this week?", "Here's a fact I came across:",
    "I was reading an article earlier.", "Something I didn't know until recently:", "My friend told me about this.",
)
ACKS = (
    "That's fascinating, thanks for sharing!", "Interesting, I didn't know that.", "Wow, I'll remember that.",
    "Neat! Tell me more sometime.", "That's a good one.", "Huh, that's new to me.",
)
RECALLS = (
    "One more thing about {title}: {sentence}", "Remember {title}? I also read that {sentence}",
    "Back to {title} for a second. {sentence}",
)
SMALL_TALK = (
    ("How was your weekend?", "Pretty relaxing, I mostly stayed in and read."),
    ("I'm so tired today.", "Maybe get some rest early tonight?"),
    ("Do you like cooking?", "I do, especially trying new recipes."),
    ("The weather has been lovely lately.", "Yes, perfect for a long walk."),
    ("I started a new exercise routine.", "Good for you! How is it going?"),
    ("Any plans for the holidays?", "Not yet, maybe visiting family."),
    ("I watched a great movie last night.", "Nice, I could use a recommendation."),
    ("Work has been really busy.", "Hang in there, it'll calm down."),
    ("My cat knocked over a plant again.", "Cats will be cats!"),
    ("I'm thinking of learning a new language.", "That's a great idea, which one?"),
)
GREETINGS = (
    ("Hi again! It's been a few days.", "Hey! Good to hear from you."),
    ("Hello! I'm back.", "Welcome back! What's new?"),
    ("Hey, do you have a minute to chat?", "Sure, always happy to talk."),
)
QUESTIONS = (
    "Earlier I told you about a {description}. What was it called again?",
    "Which {description} did I mention in one of our chats?",
    "Remind me, what was the name of that {description} I talked about?",
)
REPLY = "You told me about {title}."


def turn(speaker1: str, speaker2: str) -> str:
    """One history unit in MSC's format."""
    return f"Speaker 1: {speaker1}\nSpeaker 2: {speaker2}"


def dialogue(target: WikiArticle, distractors: list[WikiArticle], n_turns: int, rng: random.Random) -> Record:
    """One constructed dialogue: history turns, the question in the last session, the reply, gold turn ids."""
    units: list[tuple[str, bool]] = []  # (turn, holds the target's fact)
    for article in [target, *distractors]:
        fact = sentences(article.extract)[0]
        units.append((turn(f"{rng.choice(OPENERS)} {fact}", rng.choice(ACKS)), article is target))
    while len(units) < n_turns - 2:
        units.append((turn(*rng.choice(SMALL_TALK)), False))
    rng.shuffle(units)
    second = sentences(target.extract)[1:2]
    if second and rng.random() < 0.3:  # sometimes the user comes back to the subject later
        first = next(i for i, (_, gold) in enumerate(units) if gold)
        where = rng.randint(first + 1, len(units))
        recall = rng.choice(RECALLS).format(title=target.title, sentence=second[0])
        units.insert(where, (turn(recall, rng.choice(ACKS)), True))
    n_sessions = rng.randint(3, 5)
    cuts = sorted(rng.sample(range(1, len(units)), min(n_sessions - 1, len(units) - 1)))
    history, sessions, gold, start = [], [], [], 0
    for end in [*cuts, len(units)]:
        greeting = turn(*rng.choice(GREETINGS))
        history.append(greeting)
        for text, holds in units[start:end]:
            if holds:
                gold.append(len(history))
            history.append(text)
        sessions.append(end - start + 1)
        start = end
    question = rng.choice(QUESTIONS).format(description=lower_first(target.description))
    return {
        "query": question, "task": TASK, "query_id": 0, "history": history,
        "answers": [REPLY.format(title=target.title)], "pos_index": gold, "session_sizes": sessions,
    }


def build_chat(cfg: BuildConfig) -> TaskData:
    """Articles are partitioned by split; each dialogue draws its target and distractors from its split's pool."""
    articles = wiki_articles()
    targets_ok = set(askable(articles))
    pools = partition(list(range(len(articles))), cfg.rng(TASK, "split"))
    rng = cfg.rng(TASK, "dialogues")
    splits: dict[str, list[Record]] = {}
    for split in ("test", "dev", "train"):
        pool = pools[split]
        by_topic: dict[str, list[int]] = defaultdict(list)
        for i in pool:
            by_topic[articles[i].topic].append(i)
        targets = [i for i in pool if i in targets_ok]
        if cfg.cap(split) is not None:
            targets = targets[: cfg.cap(split)]
        records = []
        for i in targets:
            low, high = TURNS[split]
            n_turns = rng.randint(low, high)
            n_facts = max(2, n_turns // 2)
            same = [j for j in by_topic[articles[i].topic] if j != i]
            others = [j for j in pool if j != i]
            chosen = rng.sample(same, min(len(same), n_facts // 2))
            chosen += rng.sample([j for j in others if j not in chosen], n_facts - 1 - len(chosen))
            records.append(dialogue(articles[i], [articles[j] for j in chosen], n_turns, rng))
        splits[split] = number_records(records)
    turns = {split: [len(r["history"]) for r in records] for split, records in splits.items()}
    span = {split: f"{min(n)}-{max(n)}" if n else "none" for split, n in turns.items()}
    return TaskData(
        task=TASK, splits=splits, sources=("wiki",),
        how=(
            "Constructed multi-session dialogues. Speaker 1 shares the lead sentence of one Wikipedia article per "
            "fact turn (the target plus distractors, half from the same topic group), mixed with small talk and a "
            "greeting at the start of each of 3-5 sessions; sometimes the user returns to the target with its second "
            "sentence. In the last session Speaker 1 asks for the subject by its human-written description; the "
            "answer (Speaker 2's reply) names the title. `history` = the earlier turns (\"Speaker 1: ...\\nSpeaker 2: "
            "...\"), `pos_index` = the turns that really hold the target's fact. History length, greetings and "
            f"returns included: {span['train']} turns in train, {span['dev']} in dev, {span['test']} in test "
            "(MSC: about 14 in train, 27 in test). Articles are partitioned by split, so no test fact appears in train."
        ),
        constructed="Everything but the facts: dialogue structure, small talk, openers, questions and replies are "
        "templates. The facts and descriptions are Wikipedia's.",
    )
