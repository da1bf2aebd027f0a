"""Micro-batching: requests that arrive within a few milliseconds of each other are merged
into one batched forward pass, so throughput grows with load.

Every request holds a parsed stream of one model. The worker takes the first waiting
request, every request of the same model and operation that queued up meanwhile (while the
previous batch ran), and more arriving within `window_ms` (up to `max_images`); it
concatenates their images into one stream, runs the library call once on a single worker
thread (torch parallelises inside it) and hands each request its share back. With
window_ms = 0 nothing waits: a lone request runs at once, and batches form only from what
piles up under load. batching=False runs every request alone (the baseline).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..bitstream import Stream


@dataclass
class _Job:
    key: tuple                        # (operation, model key): only equal keys are merged
    stream: Stream
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    requests: int = 0
    sizes: dict[int, int] = field(default_factory=dict)       # requests per batch -> count


class MicroBatcher:
    """run(key, stream) -> the result of `execute(key, merged_stream)` for this stream's images.

    `execute` returns a sequence with one entry per image of the merged stream; it runs in a
    single background thread, one batch at a time."""

    def __init__(self, execute: Callable[[tuple, Stream], list[Any]], window_ms: float = 2.0,
                 max_images: int = 64, batching: bool = True) -> None:
        self.execute, self.window, self.max_images = execute, window_ms / 1e3, max_images
        self.batching = batching
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: _Job | None = None

    async def start(self) -> None:
        """Bind to the running event loop (run() also does it on first use, so an app driven
        by several loops in turn, as test clients do, still works)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue, self._held = loop, asyncio.Queue(), None
            self._task = loop.create_task(self._loop_forever())

    async def stop(self) -> None:
        task, self._task, self._loop = self._task, None, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def run(self, key: tuple, stream: Stream) -> list[Any]:
        await self.start()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(key, stream, future))
        return await future

    async def _next(self, timeout: float | None) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        if timeout is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout) if timeout > 0 else \
                self._queue.get_nowait()
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            return None

    async def _loop_forever(self) -> None:
        while True:
            first = await self._next(None)
            jobs, images = [first], len(first.stream.payloads)
            deadline = time.perf_counter() + self.window
            while self.batching and images < self.max_images:
                # what queued up while the last batch ran joins at once; then wait out the window
                job = await self._next(max(0.0, deadline - time.perf_counter()))
                if job is None:
                    break
                if job.key != first.key or images + len(job.stream.payloads) > self.max_images:
                    self._held = job              # starts the next batch
                    break
                jobs.append(job)
                images += len(job.stream.payloads)
            await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        merged = Stream.concat([j.stream for j in jobs])
        try:
            results = await asyncio.to_thread(self.execute, jobs[0].key, merged)
        except Exception as exc:            # one bad stream fails only its own request
            if len(jobs) == 1:
                if not jobs[0].future.done():
                    jobs[0].future.set_exception(exc)
                return
            for job in jobs:                # retry alone to find the culprit
                await self._run_batch([job])
            return
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.images += len(merged.payloads)
        self.stats.sizes[len(jobs)] = self.stats.sizes.get(len(jobs), 0) + 1
        start = 0
        for job in jobs:
            n = len(job.stream.payloads)
            if not job.future.done():
                job.future.set_result(results[start:start + n])
            start += n
