"""The one pool of threads the entropy coder runs on, shared by the API, the CLI and the
server. The rANS kernel releases the GIL, so threads code disjoint ranges of a batch's
images at once: its own OpenMP team where it was built with OpenMP (the workers torch's
ops use, see _rans.c), else this module's pool.

The number of threads is, in order: `set_threads(n)`, the TICA_CODER_THREADS environment
variable, or the cores this process may run on.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from ..errors import ConfigError

ENV = "TICA_CODER_THREADS"
# Below this many symbols per range, handing work to another thread costs more than it saves
# (a range of 20,000 symbols codes in about a millisecond).
MIN_SYMBOLS_PER_RANGE = 20_000

T = TypeVar("T")
R = TypeVar("R")
_lock = threading.Lock()
_local = threading.local()
_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                      # not on Linux
        return max(1, os.cpu_count() or 1)


def _from_env() -> int | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{ENV} must be a whole number of threads >= 1, got {value!r}")
    return n


def threads() -> int:
    """How many threads entropy coding uses (this thread's share, within `one_share`)."""
    own = share()
    if own:
        return own
    if _threads is not None:
        return _threads
    return _from_env() or available_cores()


def share() -> int | None:
    """The threads this thread's kernel calls may use, where it runs one of several
    batches at once (`one_share`), else None."""
    return getattr(_local, "share", None)


@contextlib.contextmanager
def one_share(n: int = 1):
    """Within it, this thread's kernel calls (the coder's and the integer h_s's) use at most
    `n` threads: for a caller that runs several batches at once, each on a thread of its
    own."""
    saved = share()
    _local.share = n
    try:
        yield
    finally:
        _local.share = saved


def set_threads(n: int | None) -> None:
    """Use n threads for entropy coding from now on (None: back to the default)."""
    global _threads, _pool
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError(f"the coder needs at least one thread, got {n!r}")
    with _lock:
        _threads = n
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def _get_pool(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(size, thread_name_prefix="tica-coder"), size
        return _pool


def ranges(batch: int, symbols_per_image: int, parts: int) -> list[tuple[int, int]]:
    """[begin, end) ranges splitting `batch` images into at most `parts` nearly equal ones,
    none under MIN_SYMBOLS_PER_RANGE symbols unless the whole batch is."""
    worth = max(1, batch * max(symbols_per_image, 1) // MIN_SYMBOLS_PER_RANGE)
    parts = max(1, min(parts, batch, worth))
    bounds = [batch * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def map_ranges(fn: Callable[[int, int, int], T], batch: int, symbols_per_image: int,
               own_team: bool = False) -> list[T]:
    """fn(begin, end, workers) over ranges covering the batch, the results in range order;
    an exception in any range is raised here. A kernel with a team of threads of its own
    (`own_team`: the rANS kernel built with OpenMP) gets the whole batch in one call and
    the number of workers that pays; else each range runs on this pool's threads, one
    worker each."""
    n = threads()
    spans = ranges(batch, symbols_per_image, n)
    if own_team or len(spans) == 1:
        return [fn(0, batch, len(spans))]
    pool = _get_pool(n)
    futures = [pool.submit(fn, begin, end, 1) for begin, end in spans]
    return [f.result() for f in futures]


def in_order(fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """fn(item) for each item, yielded in the items' order, several at once: on this pool's
    threads, at most `threads()` items at a time, each call within `one_share(1)` (its
    kernels on its own thread: a batch's small steps between the kernels, which one
    thread runs alone, then overlap with another batch's, where a batch on all the threads
    left one of them idle for those steps). In this thread, one item after another, where
    there is one thread or one item, or where this thread is itself one share of such work
    (no pool thread waits on the pool). An exception in fn is raised where its item's
    result would have been yielded; closing the iterator early cancels the items not yet
    started."""
    items = list(items)
    n = threads()
    if n == 1 or len(items) < 2 or share():
        for item in items:
            yield fn(item)
        return

    def shared(item: T) -> R:
        with one_share(1):
            return fn(item)

    rest = iter(items)
    pending = collections.deque(_get_pool(n).submit(shared, item) for item in
                                [next(rest) for _ in range(min(n, len(items)))])
    try:
        while pending:
            result = pending.popleft().result()
            for item in rest:                   # the next item starts before this one is used
                pending.append(_get_pool(n).submit(shared, item))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()
