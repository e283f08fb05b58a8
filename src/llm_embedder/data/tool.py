"""tool (tool retrieval): BFCL's real user requests; corpus = every unique function doc, verbalised."""

from __future__ import annotations

import json
from typing import Any

from llm_embedder.data.common import TRAIN_NEGATIVES, BuildConfig, Record, TaskData, number_records
from llm_embedder.data.lexical import LexicalIndex, pick
from llm_embedder.data.sources import BFCL_ANSWERED, BFCL_DISTRACTOR, BfclItem, bfcl_items, bfcl_multi_turn_docs

TASK = "tool"
# whole categories are held out: test = real-user (live) single/parallel requests and the Java/JavaScript ones
TEST_CATEGORIES = ("live_simple", "live_parallel", "live_parallel_multiple", "simple_java", "simple_javascript")
DEV_CATEGORIES = ("multiple",)
MAX_NEGATIVES = 20  # ToolBench records carry neg[20] (recipe §2.8)
_MISSING = object()


def verbalise(function: dict[str, Any]) -> str:
    """'name: description | required: p (type): desc; ... | optional: ...' — the tool key text."""
    params = function.get("parameters") or {}
    props = params.get("properties") or {}
    required = set(params.get("required") or [])

    def describe(names: list[str]) -> str:
        parts = []
        for name in names:
            spec = props.get(name) or {}
            text = f"{name} ({spec.get('type', 'any')})"
            if spec.get("description"):
                text += f": {' '.join(str(spec['description']).split())}"
            parts.append(text)
        return "; ".join(parts)

    text = f"{function['name']}: {' '.join(str(function.get('description') or '').split())}"
    req = [n for n in props if n in required]
    opt = [n for n in props if n not in required]
    if req:
        text += f" | required: {describe(req)}"
    if opt:
        text += f" | optional: {describe(opt)}"
    return text


def _choose(options: Any) -> Any:
    """The first acceptable value of a BFCL answer slot ('' marks an omittable argument)."""
    if not isinstance(options, list):
        return options
    for option in options:
        if option == "":
            continue
        if isinstance(option, dict):
            return {k: v for k, v in ((k, _choose(v)) for k, v in option.items()) if v is not _MISSING}
        return option
    return _MISSING


def render_call(ground_truth: tuple[dict[str, Any], ...]) -> str:
    """BFCL gold calls as text, e.g. ``spotify.play(artist="Taylor Swift", duration=20)``, one per line."""
    calls = []
    for call in ground_truth:
        for name, args in call.items():
            chosen = {k: _choose(v) for k, v in args.items()}
            rendered = ", ".join(
                f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in chosen.items() if v is not _MISSING
            )
            calls.append(f"{name}({rendered})")
    return "\n".join(calls)


def tool_corpus() -> tuple[list[Record], dict[tuple[str, str], int]]:
    """Every unique (name, description) function doc of BFCL, in a fixed order; and the lookup table."""
    corpus: list[Record] = []
    lookup: dict[tuple[str, str], int] = {}

    def add(function: dict[str, Any]) -> None:
        key = (str(function["name"]), str(function.get("description") or ""))
        if key not in lookup:
            lookup[key] = len(corpus)
            # "name", not "title": the text begins with the name already, and a title is put before the text as a key
            corpus.append({"id": len(corpus), "name": key[0], "text": verbalise(function)})

    for category in BFCL_ANSWERED + BFCL_DISTRACTOR:
        for item in bfcl_items(category):
            for function in item.functions:
                add(function)
    for function in bfcl_multi_turn_docs():
        add(function)
    return corpus, lookup


def _doc_id(function: dict[str, Any], lookup: dict[tuple[str, str], int]) -> int:
    return lookup[(str(function["name"]), str(function.get("description") or ""))]


def _gold_and_offered(item: BfclItem, lookup: dict[tuple[str, str], int]) -> tuple[list[int], list[int]]:
    by_name = {f["name"]: _doc_id(f, lookup) for f in item.functions}
    gold: list[int] = []
    for call in item.ground_truth:
        for name in call:
            if name in by_name and by_name[name] not in gold:
                gold.append(by_name[name])
    offered = [d for d in by_name.values() if d not in gold]
    return gold, offered


def build_tool(cfg: BuildConfig) -> TaskData:
    """Held-out categories for dev/test; negatives = the other offered functions, then BM25 over the corpus."""
    corpus, lookup = tool_corpus()
    keys = [entry["text"] for entry in corpus]
    groups = {"test": TEST_CATEGORIES, "dev": DEV_CATEGORIES}
    groups["train"] = tuple(c for c in BFCL_ANSWERED if c not in TEST_CATEGORIES + DEV_CATEGORIES)
    index = LexicalIndex(keys)
    rng = cfg.rng(TASK, "split")
    seen_pos: set[int] = set()
    seen_queries: set[str] = set()
    splits: dict[str, list[Record]] = {}
    dropped: dict[str, int] = {}
    for split in ("test", "dev", "train"):
        items = [item for category in groups[split] for item in bfcl_items(category)]
        rng.shuffle(items)
        kept = []
        for item in items:  # disjointness: no query or positive of an earlier (held-out) split
            gold, offered = _gold_and_offered(item, lookup)
            if gold and not seen_pos.intersection(gold) and item.request.casefold() not in seen_queries:
                kept.append((item, gold, offered))
        dropped[split] = len(items) - len(kept)
        cap = cfg.cap(split)
        kept = kept[:cap] if cap is not None else kept
        ranked = index.search([item.request for item, _, _ in kept], k=TRAIN_NEGATIVES + 16)
        records = []
        for (item, gold, offered), hits in zip(kept, ranked, strict=True):
            exclude = set(gold) | seen_pos
            gold_names = {corpus[g]["name"] for g in gold}
            neg = [d for d in offered if d not in exclude][:MAX_NEGATIVES]
            if len(neg) < TRAIN_NEGATIVES:
                bm25 = [d for d in hits if corpus[d]["name"] not in gold_names]
                neg += pick(bm25, exclude | set(neg), TRAIN_NEGATIVES - len(neg))
            records.append({
                "query": item.request,
                "task": TASK,
                "query_id": 0,
                "pos": [keys[g] for g in gold],
                "neg": [keys[d] for d in neg],
                "answers": [render_call(item.ground_truth)],
                "pos_index": gold,
                "neg_index": neg,
                "category": item.category,
                "source_id": item.id,
            })
        splits[split] = number_records(records)
        for record in records:
            seen_pos.update(record["pos_index"])
            seen_queries.add(record["query"].casefold())
    return TaskData(
        task=TASK,
        splits=splits,
        corpus=corpus,
        sources=("bfcl",),
        how=(
            f"Corpus: all {len(corpus):,} unique (name, description) function docs of BFCL v4 (single-turn, "
            "irrelevance and multi-turn API docs), verbalised as `name: description | required: ... | optional: ...` "
            "(key = \"{text}\"). Queries: the real user request; positives = the gold function(s) of the "
            "possible-answer file; negatives = the other functions offered with that request (at most 20), "
            "topped up to 7 with BM25 hits of other names. Whole categories are held out: "
            f"test = {', '.join(TEST_CATEGORIES)}; dev = {', '.join(DEV_CATEGORIES)}; "
            f"train = {', '.join(groups['train'])}. Records whose positive function or request text already belongs to "
            f"test (or dev) are dropped from later splits (dropped: {dropped}). Answer = the gold call, first "
            "acceptable value of each argument."
        ),
        constructed="Nothing: requests, functions and gold calls are BFCL's; only the verbalisation is ours.",
        stats={"dropped_for_disjointness": dropped},
    )
