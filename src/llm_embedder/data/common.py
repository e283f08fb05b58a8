"""What every task builder shares: the build settings, the result type, seeded RNGs, split sizes, text helpers."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

SIZES = ("small", "full")
SPLITS = ("train", "dev", "test")
TRAIN_NEGATIVES = 7  # train_group_size 8 = 1 positive + 7 negatives (recipe §2.3)
SMALL_COUNTS = {"train": 200, "dev": 50, "test": 100}
FULL_FRACTIONS = {"dev": 0.05, "test": 0.10}

Record = dict[str, Any]


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one build: ``small`` caps each split (SMALL_COUNTS); ``full`` uses every source item."""

    size: str = "small"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")

    def rng(self, task: str, purpose: str = "") -> random.Random:
        """An RNG that depends only on the seed, task and purpose (string seeds are hashed stably)."""
        return random.Random(f"{self.seed}:{task}:{purpose}")

    def split_units(self, n_units: int, per_unit: float = 1.0) -> dict[str, int]:
        """How many source units (articles, documents...) go to each split.

        ``per_unit`` is the number of records one unit yields, so small builds take only what they need.
        """
        if self.size == "small":
            counts = {s: max(1, int(round(SMALL_COUNTS[s] / per_unit))) for s in SPLITS}
            if sum(counts.values()) > n_units:  # tiny source: keep the proportions
                scale = n_units / sum(counts.values())
                counts = {s: max(1, int(counts[s] * scale)) for s in SPLITS}
            return counts
        test = max(1, int(round(n_units * FULL_FRACTIONS["test"])))
        dev = max(1, int(round(n_units * FULL_FRACTIONS["dev"])))
        return {"test": test, "dev": dev, "train": max(0, n_units - test - dev)}

    def cap(self, split: str) -> int | None:
        """The most records a split may hold (None: no cap)."""
        return SMALL_COUNTS[split] if self.size == "small" else None


def assign_splits(units: list[Any], counts: dict[str, int], rng: random.Random) -> dict[str, list[Any]]:
    """Shuffle units and cut them into test, dev, then train (disjoint by construction)."""
    order = list(units)
    rng.shuffle(order)
    test = order[: counts["test"]]
    dev = order[counts["test"] : counts["test"] + counts["dev"]]
    train = order[counts["test"] + counts["dev"] : counts["test"] + counts["dev"] + counts["train"]]
    return {"train": train, "dev": dev, "test": test}


@dataclass
class TaskData:
    """One task's built splits, optional shared corpus, and what the data card says about it."""

    task: str
    splits: dict[str, list[Record]]
    corpus: list[Record] | None = None
    sources: tuple[str, ...] = ()  # keys of data.sources.SOURCES
    how: str = ""  # markdown: how the examples were built
    constructed: str = ""  # markdown: which parts are constructed rather than human-written
    stats: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = {split: len(self.splits.get(split, [])) for split in SPLITS}
        if self.corpus is not None:
            counts["corpus"] = len(self.corpus)
        return counts


def number_records(records: list[Record]) -> list[Record]:
    """Give records consecutive query_ids (0..n-1) in their final order."""
    for query_id, record in enumerate(records):
        record["query_id"] = query_id
    return records


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> list[str]:
    """A cheap sentence split, good enough for Wikipedia lead passages."""
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def lower_first(text: str) -> str:
    """'Country in West Asia' -> 'country in West Asia' (keeps acronyms such as 'US state')."""
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


POOL_FRACTIONS = {"test": 0.15, "dev": 0.10, "train": 0.75}


def partition(
    units: list[Any], rng: random.Random, fractions: dict[str, float] = POOL_FRACTIONS
) -> dict[str, list[Any]]:
    """Shuffle units and cut them into disjoint per-split pools by fraction (for constructed tasks)."""
    order = list(units)
    rng.shuffle(order)
    n_test = int(round(len(order) * fractions["test"]))
    n_dev = int(round(len(order) * fractions["dev"]))
    return {"test": order[:n_test], "dev": order[n_test : n_test + n_dev], "train": order[n_test + n_dev :]}
