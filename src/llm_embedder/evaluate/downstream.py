"""The LLM in the loop: how much the retrieved items help the LLM produce the gold output.

Every task's prompt comes from its reward template in the task registry (the same prompt the reward was
computed with): the retrieved items fill ``{key}``, the query ``{query}``, and the gold answer is scored
at ``{answer}``. Per task (recipe §3, scaled to a 135M LLM):

- qa (top 3 passages), icl (top 8 examples): mean log-likelihood of the gold answer per token (higher is
  better); qa also reports the accuracy of a greedy answer (normalised match) when ``generate`` is on;
- chat (top turn), lrlm (top 2 chunks): perplexity of the gold continuation, exp(-mean log-likelihood) (lower
  is better);
- a user task (registered, not built in) whose records carry answers: the gold answer's mean log-likelihood with its
  top 3 items in its own reward template, the best nearest the query (``user_task_spec``); its main metric stays
  NDCG@10.

tool and convsearch are judged by retrieval metrics only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from llm_embedder.evaluate.metrics import answer_match
from llm_embedder.io import check_template
from llm_embedder.reward.records import split_template
from llm_embedder.tasks import BUILTIN_TASKS, get_task, list_tasks


@dataclass(frozen=True)
class DownstreamSpec:
    """How many retrieved items go into the prompt, in which order, and what is reported."""

    items: int
    metric: str  # "loglik" or "perplexity"
    most_similar_last: bool = False  # ICL puts the best demonstration next to the query
    separator: str = "\n"
    generate: bool = False
    # the retrieved items in their source's order (lrlm's earlier chunks, as the recipe's order_method=sequential),
    # not the retrieval's; the evaluation sorts their per-query candidate ids, which are in that order
    sequential: bool = False


# The built-in tasks judged by the LLM. tool and convsearch, without an entry, are judged by retrieval metrics only;
# a user task gets ``user_task_spec``.
DOWNSTREAM: dict[str, DownstreamSpec] = {
    # a 135M LLM attends mostly to the nearest text: the best passage goes next to the question
    "qa": DownstreamSpec(items=3, metric="loglik", most_similar_last=True, generate=True),
    "icl": DownstreamSpec(items=8, metric="loglik", most_similar_last=True),  # the recipe's few-shot 8
    "chat": DownstreamSpec(items=1, metric="perplexity"),
    # the recipe's lrlm prompt: the chunks retrieved, in document order, with no separator (then the template's "\n"
    # and the query chunk); scaled down from its 8 chunks, each with its continuation, and its 2048-token window
    "lrlm": DownstreamSpec(items=2, metric="perplexity", separator="", sequential=True),
}

MAIN_METRIC: dict[str, tuple[str, bool]] = {  # task -> (metric name, higher is better)
    "qa": ("gold_loglik", True),
    "icl": ("gold_loglik", True),
    "chat": ("perplexity", False),
    "lrlm": ("perplexity", False),
    "tool": ("ndcg@5", True),
    "convsearch": ("ndcg@3", True),
}


USER_TASK_ITEMS = 3  # as qa: a user task's template is qa's by default ("Knowledge: {key}...")


def main_metric(task: str) -> tuple[str, bool]:
    return MAIN_METRIC.get(task, ("ndcg@10", True))


def is_user_task(task: str) -> bool:
    """Whether ``task`` is registered and not built in."""
    return task not in BUILTIN_TASKS and task in list_tasks()


def user_task_spec(task: str) -> DownstreamSpec:
    """A user task's LLM prompt: its top ``USER_TASK_ITEMS`` items in its reward template, the best nearest the
    query (a small LLM attends mostly to the nearest text), so last where ``{key}`` comes before ``{query}`` in the
    template (the default, qa's layout) and first where it comes after; the gold answer's log-likelihood."""
    fields = check_template(get_task(task).reward_template, "reward_template")
    key_first = fields.index("key") < fields.index("query")
    return DownstreamSpec(items=USER_TASK_ITEMS, metric="loglik", most_similar_last=key_first)


def downstream_spec(task: str) -> DownstreamSpec | None:
    """How the LLM judges a task: its ``DOWNSTREAM`` entry, ``user_task_spec`` for a user task, None for a built-in
    task judged by retrieval alone (tool, convsearch) or an unknown name."""
    if task in DOWNSTREAM:
        return DOWNSTREAM[task]
    return user_task_spec(task) if is_user_task(task) else None


def prompt_prefix(template: str, key: str, query: str) -> str:
    """The template filled up to where the answer goes, exactly as the reward fills it."""
    return split_template(template).format(key=key, query=query)


@dataclass
class DownstreamResult:
    metrics: dict[str, float]
    per_query: list[float] = field(default_factory=list)


def build_prompts(
    task: str, queries: Sequence[str], retrieved: Sequence[Sequence[str]], spec: DownstreamSpec
) -> list[str]:
    template = get_task(task).reward_template
    prompts = []
    for query, items in zip(queries, retrieved, strict=True):
        items = list(items[: spec.items])
        if spec.most_similar_last:
            items.reverse()
        prompts.append(prompt_prefix(template, spec.separator.join(items), query))
    return prompts


# On a CPU each prompt is scored in a forward pass of its own. Batched, a bf16 score (the CPU's fast mode) moved
# with its neighbours' lengths by up to 0.06 nats on SmolLM2, an exact one by under 1e-4 (benchmarks/
# bench_eval_scores.py), so one system's figures would depend on which other systems shared its evaluation (the
# prompts of all systems are scored together). Alone, they took 1.03-1.07x the time on 2 CPU cores.
EVAL_BATCH_TOKENS = 1


def eval_batch_tokens(lm: Any) -> int | None:
    """Padded tokens per forward pass for the evaluation's prompts: each alone (``EVAL_BATCH_TOKENS``), except on
    a CUDA GPU in half precision, where the LLM's own batches (None) give the same scores bit for bit.

    On an H100 (``benchmarks/gpu_check.py``, 256 prompts of 64-1024 tokens) bf16 and fp16 scores did not change
    beside other neighbours or alone, and alone took 16-19x the time; fp32 ones moved (by under 5e-5 nats).
    """
    import torch

    device = getattr(lm, "device", None)
    if getattr(device, "type", None) == "cuda" and getattr(lm, "dtype", None) in (torch.bfloat16, torch.float16):
        return None
    return EVAL_BATCH_TOKENS


def memo_logprobs(
    lm: Any, pairs: Sequence[tuple[str, str]], memo: dict, batch_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The answer's log-likelihood for each (prompt, answer) pair; only the pairs ``memo`` lacks go to the LLM (each
    once), and ``memo`` keeps their scores for the next system. ``batch_tokens``: None is ``eval_batch_tokens(lm)``.
    ``progress(done, total)`` follows the pairs sent to the LLM (called with 0 first).
    """
    todo = sorted(set(pairs) - memo.keys())
    if todo:
        step = None
        if progress is not None:
            done = [0]
            progress(0, len(todo))

            def step(n: int) -> None:
                done[0] += n
                progress(done[0], len(todo))

        fresh = lm.answer_logprob([p for p, _ in todo], [a for _, a in todo],
                                  batch_tokens=batch_tokens or eval_batch_tokens(lm), progress=step)
        memo.update(zip(todo, (float(x) for x in fresh), strict=True))
    return np.asarray([memo[pair] for pair in pairs], dtype=np.float64)


def generate_answers(lm: Any, prompts: Sequence[str], progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers (up to 16 tokens, to the first newline), a batch at a time so that ``progress(done, total)``
    follows them: on a CPU they take minutes, which showed as a bar standing still at its last prompt. The batches
    are CausalLM.generate's own (``GENERATE_BATCH``), so the answers are those of one call over all prompts."""
    from llm_embedder.llm.model import GENERATE_BATCH

    outputs: list[str] = []
    if progress is not None:
        progress(0, len(prompts))
    for lo in range(0, len(prompts), GENERATE_BATCH):
        outputs += lm.generate(list(prompts[lo:lo + GENERATE_BATCH]), max_new_tokens=16, stop=["\n"], chat=True)
        if progress is not None:
            progress(len(outputs), len(prompts))
    return outputs


def downstream_metrics(
    task: str,
    queries: Sequence[str],
    answers: Sequence[Sequence[str]],
    retrieved: Sequence[Sequence[str]],
    lm,
    *,
    generate: bool = True,
    batch_tokens: int | None = None,
    memo: dict | None = None,
    items: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DownstreamResult | None:
    """Score the gold answers with the retrieved items in the prompt; None for tasks without an LLM metric.

    ``memo`` maps (prompt, answer) to a log-likelihood already computed; only the others are sent to the LLM.
    ``items`` overrides how many retrieved items the prompt holds (the task's ``downstream_spec``).
    ``batch_tokens`` caps the padded tokens per forward pass; None: ``eval_batch_tokens(lm)``. ``progress(done,
    total)`` follows the prompts scored (``memo_logprobs``).
    """
    spec = downstream_spec(task)
    if spec is None:
        return None
    if items is not None:
        if items < 1:
            raise ValueError(f"task {task}: items in the prompt must be at least 1, got {items}")
        spec = replace(spec, items=items)
    prompts = build_prompts(task, queries, retrieved, spec)
    golds = [a[0] for a in answers]
    loglik = memo_logprobs(lm, list(zip(prompts, golds, strict=True)), {} if memo is None else memo, batch_tokens,
                           progress)
    if not np.isfinite(loglik).all():
        raise ValueError(f"task {task}: the LLM returned non-finite log-likelihoods")
    metrics: dict[str, float] = {"gold_loglik": float(loglik.mean())}
    if spec.metric == "perplexity":
        metrics["perplexity"] = float(np.exp(-loglik.mean()))
    if spec.generate and generate:
        outputs = generate_answers(lm, prompts, progress)
        metrics["accuracy"] = float(np.mean([answer_match(o, a) for o, a in zip(outputs, answers, strict=True)]))
    return DownstreamResult(metrics=metrics, per_query=loglik.tolist())
