"""Micro-batching with fair scheduling: requests that arrive within a few milliseconds of each
other are merged into one batched forward pass, so throughput grows with load; a request
that is costly runs apart, so it never holds up the cheap ones; none runs past its deadline.

Every request holds a parsed stream of one model and an estimate of its work (`image_cost`:
GFLOP per image, from tica.cost). Two lanes, each a worker that runs one piece of work at
a time on a thread of its own (torch parallelises inside it):

small lane   requests whose estimate is at most `max_gflop`. The worker takes the first
             waiting request, every request of the same model and operation that queued up
             meanwhile (while the previous batch ran), and more arriving within `window_ms`,
             up to `max_images` images and `max_gflop` of estimated work in all; it
             concatenates their images into one stream, runs the library call once and hands
             each request its share back. With window_ms = 0 nothing waits: a lone request
             runs at once, and batches form only from what piles up under load.
heavy lane   requests over `max_gflop`: never merged with others, run in pieces of
             consecutive images of at most `max_gflop` each (one image where a single image
             costs more). After each piece the request goes to the back of the heavy queue,
             so heavy requests take turns.

Why two lanes and not one worker that interleaves: a forward pass cannot be paused, and one
image can cost far more than a small request may wait (a 512x512 stream for the CIFAR model
is ~1,400 GFLOP, 15 s of a core). In a lane of their own the small requests go on being
served while it runs, sharing the cores, and each waits for at most a few batches of at most
`max_gflop`. batching=False runs every request alone (the baseline); the lanes stay.

Work that is one call, not a stream (an encode: `call(cost, work)`), goes to the lane its
estimate belongs in and runs alone there: it is never merged, and a heavy encode takes its
turn among the heavy requests instead of holding a thread of its own beside the lanes.

Deadline: a request's caller gets DeadlineError `deadline_s` after it was queued (the server
answers 504), and its work that has not started is dropped: a queued request is never run,
a heavy request's remaining pieces are skipped. A piece already running finishes (it cannot
be interrupted) and its answer is discarded. A request whose caller went away is dropped alike.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..bitstream import Stream
from ..errors import DeadlineError
from .config import BATCH_LIMITS, ServeConfig


async def within(seconds: float, work: Awaitable) -> Any:
    """`work`'s result, or DeadlineError once `seconds` have passed (inf: no deadline); then
    `work` is cancelled (a thread already running it finishes unseen)."""
    try:
        return await asyncio.wait_for(work, None if math.isinf(seconds) else seconds)
    except DeadlineError:
        raise
    except TimeoutError:
        raise DeadlineError(seconds) from None


@dataclass
class _Job:
    key: tuple                        # (operation, model key): only equal keys are merged
    stream: Stream | None             # None: a call (`work`), run alone
    future: asyncio.Future
    deadline: float                   # time.perf_counter() after which it is dropped
    costs: list[float]                # estimated GFLOP of each image
    pieces: list[list[int]] = field(default_factory=list)   # heavy: image indexes, per piece to run
    results: list = field(default_factory=list)             # heavy: answers of the pieces run
    work: Callable[[], Any] | None = None                   # a call: what to run

    @property
    def cost(self) -> float:
        return sum(self.costs)

    @property
    def images(self) -> int:
        return 1 if self.stream is None else len(self.stream.payloads)


@dataclass
class BatchStats:
    batches: int = 0                  # forward passes run (small batches and heavy pieces)
    images: int = 0
    requests: int = 0                 # requests answered by them
    sizes: dict[int, int] = field(default_factory=dict)       # requests per batch -> count
    heavy_pieces: int = 0             # passes that ran a piece of a heavy request
    expired: int = 0                  # requests dropped: deadline passed, or the caller left
    largest_gflop: float = 0.0        # the most estimated work one pass carried

    def record(self, requests: int, images: int, gflop: float, heavy: bool = False) -> None:
        self.batches += 1
        self.images += images
        self.sizes[requests] = self.sizes.get(requests, 0) + 1
        self.heavy_pieces += heavy
        self.largest_gflop = max(self.largest_gflop, gflop)


class MicroBatcher:
    """run(key, stream) -> the result of `execute(key, merged_stream)` for this stream's images.

    `execute` returns a sequence with one entry per image of the stream it is given; it runs
    in a background thread, one pass per lane at a time. `image_cost(key, (H, W))` estimates
    one image's GFLOP (None: everything costs 0, so nothing is heavy)."""

    def __init__(self, execute: Callable[[tuple, Stream], list[Any]],
                 window_ms: float = ServeConfig.batch_window_ms,
                 max_images: int = BATCH_LIMITS["cpu"][0], batching: bool = True, *,
                 image_cost: Callable[[tuple, tuple[int, int]], float] | None = None,
                 max_gflop: float = math.inf, deadline_s: float = math.inf) -> None:
        self.execute, self.window, self.max_images = execute, window_ms / 1e3, max_images
        self.batching, self.image_cost = batching, image_cost
        self.max_gflop, self.deadline_s = max_gflop, deadline_s
        self.stats = BatchStats()
        self._small: asyncio.Queue[_Job] | None = None
        self._heavy: asyncio.Queue[_Job] | None = None
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: _Job | None = None

    async def start(self) -> None:
        """Bind to the running event loop (run() also does it on first use, so an app driven
        by several loops in turn, as test clients do, still works)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._held = loop, None
            self._small, self._heavy = asyncio.Queue(), asyncio.Queue()
            self._tasks = [loop.create_task(self._small_lane()),
                           loop.create_task(self._heavy_lane())]

    async def stop(self) -> None:
        tasks, self._tasks, self._loop = self._tasks, [], None
        for task in tasks:
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass

    async def run(self, key: tuple, stream: Stream) -> list[Any]:
        """One answer per image of `stream`; DeadlineError if they are not ready in time."""
        await self.start()
        job = _Job(key, stream, self._loop.create_future(),
                   time.perf_counter() + self.deadline_s, self._costs(key, stream))
        if job.cost > self.max_gflop:
            job.pieces = self._pieces(job.costs)
        return await self._queue(job)

    async def call(self, gflop: float, work: Callable[[], Any]) -> Any:
        """work() run alone in the lane that an estimate of `gflop` belongs in; its result,
        or DeadlineError if it is not ready in time (a call not yet started never starts)."""
        await self.start()
        job = _Job(("call", object()), None, self._loop.create_future(),
                   time.perf_counter() + self.deadline_s, [gflop], work=work)
        return await self._queue(job)

    async def _queue(self, job: _Job) -> Any:
        (self._heavy if job.cost > self.max_gflop else self._small).put_nowait(job)
        # at the deadline the future is cancelled, and a lane that reaches the job skips it
        return await within(self.deadline_s, job.future)

    def _costs(self, key: tuple, stream: Stream) -> list[float]:
        if self.image_cost is None:
            return [0.0] * len(stream.sizes)
        per_size = {size: self.image_cost(key, size) for size in set(stream.sizes)}
        return [per_size[size] for size in stream.sizes]

    def _pieces(self, costs: list[float]) -> list[list[int]]:
        """Consecutive images, at most `max_gflop` and `max_images` a piece (one at least)."""
        pieces, total = [[]], 0.0
        for i, cost in enumerate(costs):
            if pieces[-1] and (total + cost > self.max_gflop or len(pieces[-1]) >= self.max_images):
                pieces.append([])
                total = 0.0
            pieces[-1].append(i)
            total += cost
        return pieces

    def _live(self, job: _Job) -> bool:
        """Whether a job is still wanted; one that is not is dropped (and counted)."""
        if not job.future.done() and time.perf_counter() >= job.deadline:
            job.future.set_exception(DeadlineError(self.deadline_s))
        if job.future.done():                   # past its deadline, or its caller left
            self.stats.expired += 1
            return False
        return True

    async def _next(self, timeout: float | None) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        if timeout is None:
            return await self._small.get()
        try:
            return await asyncio.wait_for(self._small.get(), timeout) if timeout > 0 else \
                self._small.get_nowait()
        except (asyncio.TimeoutError, asyncio.QueueEmpty):
            return None

    async def _small_lane(self) -> None:
        while True:
            first = await self._next(None)
            if not self._live(first):
                continue
            jobs, images, cost = [first], first.images, first.cost
            window_end = time.perf_counter() + self.window
            while self.batching and first.work is None and images < self.max_images:
                # what queued up while the last batch ran joins at once; then wait out the window
                job = await self._next(max(0.0, window_end - time.perf_counter()))
                if job is None:
                    break
                if not self._live(job):
                    continue
                if (job.key != first.key or images + job.images > self.max_images
                        or cost + job.cost > self.max_gflop):
                    self._held = job              # starts the next batch
                    break
                jobs.append(job)
                images, cost = images + job.images, cost + job.cost
            await self._run_batch([job for job in jobs if self._live(job)])

    async def _run_batch(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        if jobs[0].work is not None:          # a call: never merged
            await self._run_call(jobs[0])
            return
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
        self.stats.record(len(jobs), len(merged.payloads), sum(j.cost for j in jobs))
        self.stats.requests += len(jobs)
        start = 0
        for job in jobs:
            n = len(job.stream.payloads)
            if not job.future.done():
                job.future.set_result(results[start:start + n])
            start += n

    async def _run_call(self, job: _Job) -> None:
        try:
            result = await asyncio.to_thread(job.work)
        except Exception as exc:
            if not job.future.done():
                job.future.set_exception(exc)
            return
        self.stats.record(1, 1, job.cost, heavy=job.cost > self.max_gflop)
        self.stats.requests += 1
        if not job.future.done():
            job.future.set_result(result)

    async def _heavy_lane(self) -> None:
        while True:
            job = await self._heavy.get()
            if not self._live(job):
                continue
            if job.work is not None:
                await self._run_call(job)
                continue
            part = job.pieces.pop(0)
            try:
                job.results += await asyncio.to_thread(self.execute, job.key,
                                                       job.stream.subset(part))
            except Exception as exc:
                if not job.future.done():
                    job.future.set_exception(exc)
                continue
            self.stats.record(1, len(part), sum(job.costs[i] for i in part), heavy=True)
            if job.pieces:
                self._heavy.put_nowait(job)         # to the back: heavy requests take turns
            elif not job.future.done():
                self.stats.requests += 1
                job.future.set_result(job.results)
