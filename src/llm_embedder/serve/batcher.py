"""Dynamic batching: requests that arrive together share one model call.

Every embedding request (the inputs of ``/v1/embeddings``, the queries of ``/v1/search`` and ``/v1/augment``) is
queued with its token count. One background task takes the oldest request and gathers more until the batch would
exceed ``max_batch_tokens`` or ``max_batch_requests``, or until ``max_wait_ms`` after the oldest request arrived;
so a lone request waits only a few milliseconds, while under load (the model busy with the previous batch) the
queue fills and batches grow on their own. A batch runs on a single model thread, one call per (task, role) group,
so each text gets exactly its own instruction. A request may name a step to run on its vectors there (``embed_then``:
the index search of ``/v1/search``): the requests of a batch that name the same step are handed to it in one call.
``max_batch_requests=1`` turns batching off (one request per model call), for comparison.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

EncodeFn = Callable[[list[str], str, str], np.ndarray]
ThenFn = Callable[[list[tuple[np.ndarray, Any]]], list[Any]]  # [(vectors, arg) per request] -> a result per request
BatchObserver = Callable[[int, int, int, float], None]  # (requests, texts, tokens, seconds)
T = TypeVar("T")


class QueueFullError(RuntimeError):
    """The server has more requests waiting than it accepts (``max_queue``); the client should retry later."""


@dataclass
class _Item:
    texts: list[str]
    task: str
    role: str
    tokens: int
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    then: ThenFn | None = None
    arg: Any = None


class Batcher:
    """Merge concurrent ``embed`` calls into model batches bounded by tokens and requests."""

    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch_tokens: int = 8192,
        max_batch_requests: int = 256,
        max_wait_ms: float = 5.0,
        max_queue: int = 4096,
        on_batch: BatchObserver | None = None,
    ) -> None:
        if max_batch_tokens < 1 or max_batch_requests < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_tokens, max_batch_requests and max_queue must be >= 1, max_wait_ms >= 0")
        self.encode = encode
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: list[_Item] = []

    @property
    def queued(self) -> int:
        return len(self._items)

    async def start(self) -> None:
        """Start the batching loop and the model thread (call from the running event loop)."""
        if self._task is not None:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-embedder-model")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="llm-embedder-batcher")

    async def stop(self) -> None:
        """Stop the loop; requests still queued fail with RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in [*self._inflight, *self._items]:
            if not item.future.done():
                item.future.set_exception(RuntimeError("server shutting down"))
        self._items.clear()
        self._inflight = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def embed(self, texts: list[str], task: str, role: str, tokens: int) -> np.ndarray:
        """Vectors of ``texts`` (one request), computed in whatever batch it lands in."""
        return await self._queue(texts, task, role, tokens)

    async def _queue(self, texts: list[str], task: str, role: str, tokens: int, then: ThenFn | None = None,
                     arg: Any = None) -> Any:
        if self._task is None or self._wakeup is None:
            raise RuntimeError("Batcher.start() was not called")
        if len(self._items) >= self.max_queue:
            raise QueueFullError(f"{len(self._items)} requests already waiting; retry later")
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(list(texts), task, role, max(int(tokens), 1), future, then=then, arg=arg))
        self._wakeup.set()
        return await future

    async def embed_then(self, texts: list[str], task: str, role: str, tokens: int, then: ThenFn, arg: Any) -> Any:
        """What ``then`` makes of the vectors of ``texts`` (one request) and ``arg``: it runs on the model thread
        once the request's batch is encoded, in one call for every request of the batch given an equal ``then``
        (one retriever's bound ``search_vectors_many``, say), as ``then([(vectors, arg), ...])``, which returns a
        result per request, in order. An exception ``then`` returns for a request is returned here, not raised:
        the caller tells it from a failure of the model, which is raised, as is one that ``then`` raises."""
        hash(then)  # the batch's requests are grouped by it: an unhashable one is refused here, not in the loop
        return await self._queue(texts, task, role, tokens, then, arg)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other model work (a retriever's index search) on the model thread, between batches."""
        if self._executor is None:
            raise RuntimeError("Batcher.start() was not called")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _next_item(self, deadline: float | None) -> _Item | None:
        """The oldest live queued item; waits until ``deadline`` (None: forever). None on timeout."""
        assert self._wakeup is not None
        while True:
            while self._items:
                item = self._items.popleft()
                if not item.future.done():  # a client that disconnected has a cancelled future
                    return item
            self._wakeup.clear()
            if deadline is None:
                await self._wakeup.wait()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                pass

    async def _loop(self) -> None:
        carried: _Item | None = None
        while True:
            first = carried or await self._next_item(None)
            carried = None
            assert first is not None
            batch, tokens = [first], first.tokens
            deadline = first.arrived + self.max_wait
            while len(batch) < self.max_batch_requests:
                item = await self._next_item(deadline)
                if item is None:
                    break
                if tokens + item.tokens > self.max_batch_tokens:
                    carried = item  # starts the next batch
                    break
                batch.append(item)
                tokens += item.tokens
            self._inflight = batch
            await self._process(batch, tokens)
            self._inflight = []

    async def _process(self, batch: list[_Item], tokens: int) -> None:
        groups: dict[tuple[str, str], list[_Item]] = {}
        for item in batch:
            groups.setdefault((item.task, item.role), []).append(item)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        steps: dict[ThenFn, list[tuple[_Item, np.ndarray]]] = {}
        for (task, role), items in groups.items():
            texts = [text for item in items for text in item.texts]
            try:
                vectors = await loop.run_in_executor(self._executor, self.encode, texts, task, role)
            except Exception as err:  # one bad group fails its own requests, never the loop
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            offset = 0
            for item in items:
                n = len(item.texts)
                if item.then is not None:
                    steps.setdefault(item.then, []).append((item, vectors[offset : offset + n]))
                elif not item.future.done():
                    item.future.set_result(vectors[offset : offset + n])
                offset += n
        if self.on_batch is not None:  # the model's time: the steps after it are not counted
            n_texts = sum(len(item.texts) for item in batch)
            self.on_batch(len(batch), n_texts, tokens, time.perf_counter() - start)
        for then, members in steps.items():
            await self._then(then, [(item, vectors) for item, vectors in members if not item.future.done()])

    async def _then(self, then: ThenFn, members: list[tuple[_Item, np.ndarray]]) -> None:
        """One call of ``then`` for the requests of a batch that gave it, each given its own result."""
        if not members:  # every client gone
            return
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, then, [(vectors, item.arg) for item, vectors in members])
            if len(results) != len(members):
                raise RuntimeError(f"{then!r} returned {len(results)} results for {len(members)} requests")
        except Exception as err:  # fails these requests, never the loop
            for item, _ in members:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        for (item, _), result in zip(members, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
