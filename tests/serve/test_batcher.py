"""Dynamic batching, in process with a recording fake model: bounds, grouping, waiting, failure isolation."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from llm_embedder.serve.batcher import Batcher, QueueFullError


class FakeModel:
    """Encodes text t as [len(t), hash of role/task]; records every call and can be slowed or made to fail."""

    def __init__(self, delay: float = 0.0, fail_task: str | None = None) -> None:
        self.calls: list[tuple[list[str], str, str]] = []
        self.delay = delay
        self.fail_task = fail_task
        self.threads: set[str] = set()

    def __call__(self, texts: list[str], task: str, role: str) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.calls.append((list(texts), task, role))
        if task == self.fail_task:
            raise RuntimeError(f"model failed on {task}")
        time.sleep(self.delay)
        return np.array([[len(t), len(task) + (role == "key")] for t in texts], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


async def _with_batcher(model: FakeModel, body, **kwargs):
    batches: list[tuple[int, int, int]] = []
    batcher = Batcher(model, on_batch=lambda r, n, t, s: batches.append((r, n, t)), **kwargs)
    await batcher.start()
    try:
        return await body(batcher), batches
    finally:
        await batcher.stop()


def test_concurrent_requests_share_one_batch_and_get_their_own_rows() -> None:
    model = FakeModel()

    async def body(b: Batcher):
        return await asyncio.gather(*(b.embed(["x" * (i + 1)] * (i % 3 + 1), "qa", "query", 2) for i in range(6)))

    results, batches = run(_with_batcher(model, body, max_wait_ms=50))
    assert batches == [(6, 12, 12)]
    assert len(model.calls) == 1
    for i, vectors in enumerate(results):
        assert vectors.shape == (i % 3 + 1, 2)
        assert (vectors[:, 0] == i + 1).all()
    assert all(name.startswith("llm-embedder-model") for name in model.threads)


def test_batches_are_bounded_by_tokens_and_requests() -> None:
    model = FakeModel()

    async def body(b: Batcher):
        return await asyncio.gather(*(b.embed([f"t{i}"], "qa", "query", 40) for i in range(10)))

    _, batches = run(_with_batcher(model, body, max_wait_ms=50, max_batch_tokens=100))
    assert [r for r, _, _ in batches] == [2, 2, 2, 2, 2]
    assert all(t <= 100 for _, _, t in batches)

    _, batches = run(_with_batcher(model, body, max_wait_ms=50, max_batch_requests=3))
    assert [r for r, _, _ in batches] == [3, 3, 3, 1]


def test_one_request_bigger_than_the_token_bound_still_runs_alone() -> None:
    model = FakeModel()

    async def body(b: Batcher):
        return await asyncio.gather(b.embed(["a"], "qa", "query", 500), b.embed(["b"], "qa", "query", 5))

    results, batches = run(_with_batcher(model, body, max_wait_ms=20, max_batch_tokens=100))
    assert [r for r, _, _ in batches] == [1, 1]
    assert [v.shape for v in results] == [(1, 2), (1, 2)]


def test_max_batch_requests_1_disables_batching() -> None:
    model = FakeModel()

    async def body(b: Batcher):
        return await asyncio.gather(*(b.embed([str(i)], "qa", "query", 1) for i in range(5)))

    _, batches = run(_with_batcher(model, body, max_batch_requests=1, max_wait_ms=50))
    assert [r for r, _, _ in batches] == [1] * 5


def test_a_lone_request_waits_only_max_wait() -> None:
    model = FakeModel()

    async def body(b: Batcher):
        start = time.perf_counter()
        await b.embed(["alone"], "qa", "query", 1)
        return time.perf_counter() - start

    elapsed, batches = run(_with_batcher(model, body, max_wait_ms=5))
    assert batches == [(1, 1, 1)]
    assert elapsed < 0.5  # 5 ms wait plus scheduling slack on a loaded 2-core machine
    elapsed_long, _ = run(_with_batcher(model, body, max_wait_ms=200))
    assert elapsed_long >= 0.19  # the wait is real: nothing else came, so it waited the full window


def test_mixed_tasks_and_roles_are_encoded_with_their_own_instruction() -> None:
    model = FakeModel()

    async def body(b: Batcher):
        return await asyncio.gather(
            b.embed(["q1"], "qa", "query", 1), b.embed(["k1", "k2"], "qa", "key", 2),
            b.embed(["c1"], "chat", "query", 1), b.embed(["q2"], "qa", "query", 1),
        )

    results, batches = run(_with_batcher(model, body, max_wait_ms=50))
    assert batches == [(4, 5, 5)]
    assert sorted((tuple(t), task, role) for t, task, role in model.calls) == [
        (("c1",), "chat", "query"), (("k1", "k2"), "qa", "key"), (("q1", "q2"), "qa", "query"),
    ]
    assert results[1][:, 1].tolist() == [3.0, 3.0]  # qa key
    assert results[2][:, 1].tolist() == [4.0]  # chat query
    assert results[3][:, 1].tolist() == [2.0]  # qa query


def test_a_failing_group_fails_only_its_requests_and_the_loop_goes_on() -> None:
    model = FakeModel(fail_task="chat")

    async def body(b: Batcher):
        out = await asyncio.gather(
            b.embed(["ok"], "qa", "query", 1), b.embed(["bad"], "chat", "query", 1), return_exceptions=True
        )
        after = await b.embed(["later"], "qa", "query", 1)
        return out, after

    (out, after), _ = run(_with_batcher(model, body, max_wait_ms=50))
    assert isinstance(out[0], np.ndarray)
    assert isinstance(out[1], RuntimeError) and "chat" in str(out[1])
    assert after.shape == (1, 2)


def test_queue_limit_raises_queue_full() -> None:
    model = FakeModel(delay=0.2)

    async def body(b: Batcher):
        return await asyncio.gather(*(b.embed([str(i)], "qa", "query", 1) for i in range(6)), return_exceptions=True)

    out, _ = run(_with_batcher(model, body, max_queue=2, max_batch_requests=1, max_wait_ms=0))
    assert any(isinstance(r, QueueFullError) for r in out)
    assert any(isinstance(r, np.ndarray) for r in out)


def test_requests_arriving_while_the_model_is_busy_form_the_next_batch() -> None:
    model = FakeModel(delay=0.2)

    async def body(b: Batcher):
        first = asyncio.ensure_future(b.embed(["first"], "qa", "query", 1))
        await asyncio.sleep(0.05)  # the first batch is now running on the model thread
        rest = await asyncio.gather(*(b.embed([str(i)], "qa", "query", 1) for i in range(8)))
        return await first, rest

    _, batches = run(_with_batcher(model, body, max_wait_ms=1))
    assert [r for r, _, _ in batches] == [1, 8]


def test_invalid_settings_and_use_before_start() -> None:
    with pytest.raises(ValueError):
        Batcher(FakeModel(), max_batch_tokens=0)
    with pytest.raises(RuntimeError, match="start"):
        run(Batcher(FakeModel()).embed(["x"], "qa", "query", 1))


class Step:
    """A step after encoding (``embed_then``): records its calls and threads; an arg "bad" gets an exception back, an
    arg "raise" makes the whole call raise, "short" makes it return one result too few."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[list[object]] = []
        self.threads: set[str] = set()

    def __call__(self, pairs):
        self.threads.add(threading.current_thread().name)
        self.calls.append([arg for _, arg in pairs])
        args = [arg for _, arg in pairs]
        if "raise" in args:
            raise RuntimeError(f"{self.name} failed")
        out = [ValueError(f"bad {self.name}") if arg == "bad" else (self.name, arg, vectors[:, 0].tolist())
               for vectors, arg in pairs]
        return out[:-1] if "short" in args else out


def test_embed_then_runs_each_step_once_for_the_requests_of_a_batch() -> None:
    """The requests of one batch that give one step are handed to it in one call on the model thread, each getting
    its own result (an exception returned for one is returned to it, not raised); plain embeds get vectors."""
    model, first, second = FakeModel(), Step("first"), Step("second")

    async def body(b: Batcher):
        return await asyncio.gather(
            b.embed_then(["a"], "qa", "query", 1, first, 1), b.embed_then(["bb", "ccc"], "qa", "query", 2, first, 2),
            b.embed_then(["dddd"], "qa", "query", 1, second, 3), b.embed(["eeeee"], "qa", "query", 1),
            b.embed_then(["ff"], "chat", "query", 1, first, "bad"))

    out, batches = run(_with_batcher(model, body, max_wait_ms=50))
    assert batches == [(5, 6, 6)] and len(model.calls) == 2  # qa and chat: two model calls
    assert first.calls == [[1, 2, "bad"]] and second.calls == [[3]]  # one call each, after both groups
    assert out[0] == ("first", 1, [1.0]) and out[1] == ("first", 2, [2.0, 3.0]) and out[2] == ("second", 3, [4.0])
    assert isinstance(out[3], np.ndarray) and out[3][:, 0].tolist() == [5.0]
    assert isinstance(out[4], ValueError) and str(out[4]) == "bad first"
    assert all(name.startswith("llm-embedder-model") for name in first.threads | second.threads)


def test_a_failing_step_fails_only_its_requests_and_the_loop_goes_on() -> None:
    model, failing, short, fine = FakeModel(), Step("failing"), Step("short"), Step("fine")

    async def body(b: Batcher):
        out = await asyncio.gather(
            b.embed_then(["a"], "qa", "query", 1, failing, "raise"), b.embed_then(["b"], "qa", "query", 1, failing, 2),
            b.embed_then(["c"], "qa", "query", 1, short, "short"), b.embed_then(["d"], "qa", "query", 1, fine, 4),
            return_exceptions=True)
        return out, await b.embed_then(["later"], "qa", "query", 1, failing, 5)

    (out, after), _ = run(_with_batcher(model, body, max_wait_ms=50))
    assert [type(r) for r in out[:3]] == [RuntimeError] * 3
    assert str(out[0]) == str(out[1]) == "failing failed" and "returned 0 results for 1 requests" in str(out[2])
    assert out[3] == ("fine", 4, [1.0]) and after == ("failing", 5, [5.0])
    with pytest.raises(TypeError, match="unhashable"):
        run(_with_batcher(model, lambda b: b.embed_then(["x"], "qa", "query", 1, UnhashableStep(), 0)))


class UnhashableStep:
    __hash__ = None

    def __call__(self, pairs):
        return [None for _ in pairs]
