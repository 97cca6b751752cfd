"""``map()``: a run that reads its input in chunks as the results are consumed, the
chunk policy that sizes them, and the iterator that hands the results over
(docs/design.md §10).

:class:`ChunkPolicy` and :class:`TaskTimes` are plain values: what a chunk's size
depends on (the measured time per task, the tasks completed, the input left) goes in,
a size comes out, so tests drive them directly.  :class:`MapRun` does the reading: a
list, tuple or range is sliced by the manager thread as it sends each chunk; any other
iterable is read by the thread that consumes the results (its code may be slow, or not
thread-safe).  Each chunk's outcome arrives in a :class:`Chunk`, a light future.
"""

from __future__ import annotations

import collections
import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as futures_TimeoutError
from typing import Any

from .jobs import Job, Piece
from .progress_bar import make_bar
from .tuning import (
    CHUNK_SECONDS,
    MAX_CHUNK_TASKS,
    MAX_READ_AHEAD_TASKS,
    PREFETCH_PIECES,
    PREFETCH_SECONDS,
    PROBE_GROWTH,
    PROBE_TASKS,
    READ_AHEAD_TASKS,
)

__all__ = ["MAX_READ_AT_SHUTDOWN", "Chunk", "ChunkPolicy", "MapIterator", "MapRun",
           "TaskTimes"]

#: tasks a map reads at most when the executor shuts down (the rest of an input longer
#: than that, or endless, raises RuntimeError when the consumer reaches it)
MAX_READ_AT_SHUTDOWN = 1 << 20


class TaskTimes:
    """What a function's tasks took: seconds and tasks, both decayed by half at every
    chunk, so that a chunk weighs as many tasks as it has (small chunks, whose fixed
    costs make their tasks look longer, weigh little); and ``evidence``, the tasks
    measured in all.  ``per_task`` is trusted once ``PROBE_TASKS`` were measured (before
    that a first call's costs dominate)."""

    __slots__ = ("evidence", "measured", "per_task")

    def __init__(self, measured: tuple[float, float] = (0.0, 0.0), evidence: int = 0) -> None:
        self.measured = measured
        self.evidence = evidence
        self.per_task: float | None = None
        self._update()

    def _update(self) -> None:
        seconds, tasks = self.measured
        if self.evidence >= PROBE_TASKS and tasks:
            self.per_task = seconds / tasks

    def measure(self, seconds: float, tasks: int) -> None:
        """A chunk's tasks kept a worker busy ``seconds``."""
        self.measured = (0.5 * self.measured[0] + seconds, 0.5 * self.measured[1] + tasks)
        self.evidence += tasks
        self._update()

    def guess(self) -> float | None:
        """Seconds per task from what was measured, however little (an overstatement:
        first calls cost more)."""
        seconds, tasks = self.measured
        return seconds / tasks if tasks else None

    def saved(self) -> tuple[tuple[float, float], int]:
        return self.measured, self.evidence


class ChunkPolicy:
    """The size of a map's next chunk.  ``workers``: the executor's; ``total``: the
    input's length if known; ``chunksize``: the caller's, if given (then that is all);
    ``in_memory``: chunks are read into memory ahead of their turn (an iterator), so
    they are bounded; ``max_tasks``: ``max_tasks_per_child``.  It remembers one thing,
    ``tail``: the size of the last chunks, once planned."""

    __slots__ = ("chunksize", "in_memory", "max_tasks", "tail", "total", "workers")

    def __init__(self, workers: int, total: int | None = None, chunksize: int | None = None,
                 in_memory: bool = False, max_tasks: int | None = None) -> None:
        self.workers = workers
        self.total = total
        self.chunksize = chunksize
        self.in_memory = in_memory
        self.max_tasks = max_tasks
        self.tail: int | None = None

    def next_size(self, times: TaskTimes, completed: int, remaining: int | None) -> int:
        """``completed``: tasks whose outcome came back; ``remaining``: tasks of the
        input not yet read (None: unknown)."""
        if self.chunksize is not None:
            return self.chunksize
        workers = self.workers
        if times.per_task is not None:
            per_task = max(times.per_task, 1e-7)
            size = int(CHUNK_SECONDS / per_task)
            if self.total is not None:
                # and at least four chunks per worker (as Pool makes them): while the
                # workers run some, the parent pickles the next and unpickles the last
                size = min(size, -(-self.total // (4 * workers)))
            # once what is left is no more than a chunk per worker, it is split evenly
            # into a chunk per worker: a worker that ends early takes back what another
            # has not begun, so the end needs no tail of small chunks (they would cost
            # the parent CPU time, which the workers may need)
            if remaining is not None:
                if self.tail is None and remaining <= size * workers:
                    self.tail = -(-remaining // workers)
                if self.tail is not None:
                    size = min(size, self.tail)
            if self.in_memory:
                size = min(size, MAX_CHUNK_TASKS)
        else:  # probing: one task per worker first, then up to four times as many as have
            # completed, in chunks that the first measurements expect to be short; no
            # worker takes more than its share of a short input (the others would wait)
            size = max(1, PROBE_GROWTH * completed)
            guess = times.guess()
            if guess:
                size = min(size, max(1, int(CHUNK_SECONDS / guess)))
            if remaining is not None:
                size = min(size, -(-remaining // workers))
        if self.max_tasks is not None:
            size = min(size, self.max_tasks)
        return max(1, size)


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


class Chunk:
    """The outcome of one map chunk: what map needs of a Future, lighter (no lock of its
    own: its map's condition, notified only when the consumer waits for this chunk)."""

    __slots__ = ("callback", "run", "state", "value")

    def __init__(self, run: MapRun) -> None:
        self.run = run
        self.state = _PENDING
        self.value: Any = None
        self.callback: Callable[[Chunk], object] | None = None

    def set_running_or_notify_cancel(self) -> bool:
        with self.run.chunk_lock:
            if self.state == _CANCELLED:
                return False
            self.state = _RUNNING
            return True

    def cancel(self) -> bool:
        run = self.run
        with run.chunk_lock:
            if self.state in (_RUNNING, _FINISHED):
                return False
            self.state = _CANCELLED
            if run.waiting is self:
                run.arrived.notify()
            return True

    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def done(self) -> bool:
        return self.state in (_CANCELLED, _FINISHED)

    def exception(self) -> None:
        return None  # a chunk's task errors are part of its value

    def set_result(self, value: Any) -> None:
        run = self.run
        with run.chunk_lock:
            self.value = value
            self.state = _FINISHED
            run.chunks_finished += 1
            if run.waiting is self:
                run.arrived.notify()
        if self.callback is not None:
            self.callback(self)

    def add_done_callback(self, callback: Callable[[Chunk], object]) -> None:
        self.callback = callback

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the chunk; meanwhile read more input when the executor is short of
        work (an iterator's items are read by this thread: :meth:`MapRun.refill`)."""
        if self.state != _FINISHED:
            run = self.run
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                with run.chunk_lock:
                    run.waiting = self
                    try:
                        left = None if deadline is None else deadline - time.monotonic()
                        arrived = run.arrived.wait_for(
                            lambda: self.done() or run.hungry, left)
                    finally:
                        run.waiting = None
                    if self.done():
                        break
                    if not arrived:
                        raise futures_TimeoutError()
                    run.hungry = False
                run.fill()
            if self.state == _CANCELLED:
                raise CancelledError()
        return self.value


class MapIterator(itertools.chain):
    """map's results: chunks of results flattened in C (no Python frame per result),
    with ``close()`` as a generator has (stops reading input, cancels what is queued).
    Each chunk is handed over as a deque emptied as it goes: a result yielded is no
    longer held."""

    _run: MapRun
    _chunks: Iterator[list]

    @classmethod
    def over(cls, run: MapRun, end_time: float | None) -> MapIterator:
        chunks = run.results(end_time)
        iterator = cls.from_iterable(chunks)
        iterator._run = run
        iterator._chunks = chunks
        return iterator

    def close(self) -> None:
        # the rest of the chunk being handed over: let it go (its iterator is left
        # empty, and the chain goes on to the closed generator: StopIteration)
        collections.deque(self._run.current, maxlen=0)
        self._chunks.close()  # type: ignore[attr-defined]


_END = object()


def _handing_over(values: list, plain: bool) -> Iterator:
    """The values one by one, each let go of as it is yielded (at C speed: a deque's
    popleft called once per value).  Plain values (numbers, strings, containers of those:
    nothing that can be referenced weakly) are simply iterated, the fastest way."""
    if plain:
        return iter(values)
    queue = collections.deque(values)
    return itertools.starmap(queue.popleft, itertools.repeat((), len(queue)))


def _length(iterables: tuple) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


class MapRun:
    """One ``map()``: reads the input in chunks as the results are consumed."""

    def __init__(self, pool: Any, fn: Any, iterables: tuple, chunksize: int | None,
                 buffersize: int | None, timeout: float | None, progress: Any) -> None:
        self.pool = pool
        self.fn = fn
        self.total = _length(iterables)
        self.remaining = self.total
        self.star = len(iterables) != 1
        # lists, tuples and ranges are sliced by the manager thread, chunk by chunk, as
        # it sends them; other iterables are read here, by the thread that consumes
        self.sequences = iterables if all(
            type(it) in (list, tuple, range) for it in iterables) else None
        self.position = 0
        self.args = None if self.sequences else (
            zip(*iterables, strict=False) if self.star else iter(iterables[0]))
        self.chunksize = chunksize
        self.timeout = timeout
        self.buffersize = buffersize
        self.exhausted = False
        self.chunks: collections.deque[Chunk] = collections.deque()
        self.buffered = 0
        self.fn_payload = pool.encoder.function(fn)
        # what this function's tasks took, the previous maps' included (no probe needed)
        self.times = TaskTimes(*pool.task_seconds.get(self.fn_payload, ((0.0, 0.0), 0)))
        self.policy = ChunkPolicy(pool.max_workers, self.total, chunksize,
                                  in_memory=self.sequences is None, max_tasks=pool.max_tasks)
        self.completed = 0  # tasks whose outcome came back (the evidence chunks grow by)
        # chunks read (under ``lock``), and chunks whose outcomes are all in (written by
        # the manager thread alone)
        self.chunks_read = self.chunks_finished = 0
        self.current: Iterator = iter(())  # the results being handed over
        self.lock = threading.Lock()  # the manager thread reads sequences ahead too
        self.closed = False
        self.stopped: BaseException | None = None  # why the executor stopped the reading
        self.read_budget: int | None = None  # at shutdown: tasks it may still read
        # chunks' outcomes: the consumer waits on ``arrived`` for the chunk ``waiting``
        self.chunk_lock = threading.Lock()
        self.arrived = threading.Condition(self.chunk_lock)
        self.waiting: Chunk | None = None
        self.hungry = False  # the executor is short of work: read more input (iterators)
        self.bar = make_bar(self.total, progress) if progress else None
        pool.maps.add(self)

    @property
    def per_task(self) -> float | None:
        return self.times.per_task

    def measure(self, seconds: float, tasks: int) -> None:
        """A chunk's tasks kept a worker busy ``seconds`` (called by the manager)."""
        self.times.measure(seconds, tasks)
        self.pool.remember_task_seconds(self.fn_payload, self.times.saved())

    def next_size(self) -> int:
        return self.policy.next_size(self.times, self.completed, self.remaining)

    def window(self) -> int:
        if self.buffersize is not None:
            return self.buffersize
        return 1 << 62  # bounded by wants_more's rules instead

    def fill(self) -> None:
        """Read more input, if the read-ahead allows (the consuming thread)."""
        pieces = self.locked_new_pieces()
        if pieces:
            self.pool.enqueue(pieces)

    def refill(self) -> None:
        """The same, from the manager thread as a chunk completes, for input that needs
        no reading (lists, tuples, ranges): the workers need not wait for the consuming
        thread to wake up and take its turn.  An iterator is read by the consuming thread
        alone (its code may be slow, or not thread-safe): if the executor has no work
        queued, that thread is woken to read more, even while it waits for an earlier
        chunk that runs long."""
        if self.buffersize is not None:
            return
        if self.sequences is None:
            if not self.exhausted and not self.closed and not self.pool.queue:
                with self.chunk_lock:
                    self.hungry = True
                    if self.waiting is not None:
                        self.arrived.notify()
            return
        pieces = self.locked_new_pieces()
        if pieces:
            self.pool.enqueue_here(pieces)

    def locked_new_pieces(self) -> list[Piece]:
        with self.lock:
            return [] if self.closed else self.new_pieces()

    def wants_more(self, probing: bool) -> bool:
        """Read further ahead?  A few chunks per worker (or ``READ_AHEAD_TASKS``), and
        more while they are short, so that workers have their prefetch queues full."""
        if self.read_budget is not None:
            return self.read_budget > 0
        workers = self.pool.max_workers
        if self.buffered >= self.window():
            return False
        if probing:  # a chunk per worker (two for input read by the consumer, which may
            # be waiting for another chunk when one completes)
            return (self.chunks_read - self.chunks_finished
                    < workers * (1 if self.sequences is not None else 2))
        if len(self.chunks) < 2 * workers + 2 or self.buffered < READ_AHEAD_TASKS:
            return True
        if (len(self.chunks) >= workers * (PREFETCH_PIECES + 2)
                or self.buffered >= MAX_READ_AHEAD_TASKS or self.per_task is None):
            return False
        return self.buffered * self.per_task < workers * PREFETCH_SECONDS

    def new_pieces(self) -> list[Piece]:
        pieces = []
        # until a first chunk has been measured, one probe per worker
        probing = self.chunksize is None and self.per_task is None
        while not self.exhausted and self.wants_more(probing):
            size = self.next_size()
            if self.buffersize is not None:
                size = min(size, self.buffersize - self.buffered)
            args, source, count = self.take(size)
            if not count:
                self.exhausted = True
                break
            if self.remaining is not None:
                self.remaining -= count
            if self.read_budget is not None:
                self.read_budget -= count
            future = Chunk(self)
            self.chunks_read += 1
            job = Job(future, self.fn, args, None, single=False, timeout=self.timeout,
                       star=self.star, fn_payload=self.fn_payload, run=self, size=count,
                       source=source)
            if self.bar is not None:
                future.add_done_callback(functools.partial(self._advance, job))
            self.chunks.append(future)
            self.buffered += count
            pieces.append(Piece(job, range(count)))
        return pieces

    def take(self, size: int) -> tuple[list | None, Callable[[], list] | None, int]:
        """The next ``size`` tasks at most: ``(arguments, None, count)`` read now, or
        ``(None, source, count)`` to be sliced from the sequences when sent."""
        if self.sequences is None:
            args = list(itertools.islice(self.args, size))  # type: ignore[arg-type]
            return args, None, len(args)
        start = self.position
        count = max(0, min(size, self.total - start))  # type: ignore[operator]
        self.position += count
        return None, functools.partial(self.slice, start, start + count), count

    def slice(self, start: int, stop: int) -> list:
        if not self.star:
            part = self.sequences[0][start:stop]  # type: ignore[index]
            return part if type(part) is list else list(part)
        parts = [seq[start:stop] for seq in self.sequences]  # type: ignore[union-attr]
        return list(zip(*parts, strict=False))

    def _advance(self, job: Job, future: Chunk) -> None:
        """(In the manager thread: the consumer may already have taken the results.)"""
        if not future.cancelled() and self.bar is not None:
            self.bar.update(job.size)

    def results(self, end_time: float | None) -> Iterator[Iterator]:
        try:
            while self.chunks:
                future = self.chunks[0]
                remaining = None if end_time is None else end_time - time.monotonic()
                values, errors, plain = future.result(remaining)
                future.value = None  # the results are the consumer's from here on
                count = len(values)
                with self.lock:
                    self.chunks.popleft()
                    if self.buffersize is None:  # read on while these are consumed
                        self.buffered -= count
                if self.buffersize is None:
                    self.fill()
                if errors:
                    first = min(errors)
                    self.current = results = _handing_over(values[:first], plain)
                    del values
                    yield results
                    raise errors[first]
                self.current = results = _handing_over(values, plain)
                del values, errors
                yield results
                del results
                if self.buffersize is not None:  # consumed: now read further
                    with self.lock:
                        self.buffered -= count
                    self.fill()
            if self.stopped is not None and self.input_left():
                raise self.stopped  # the rest was never read, let alone run
        finally:
            self.stop_reading()
            if self.bar is not None:
                self.bar.close()

    def input_left(self) -> bool:
        """Is there input that was not read?  (After the reading stopped.)"""
        with self.lock:
            if self.exhausted:
                return False
            if self.sequences is not None:
                return self.position < self.total  # type: ignore[operator]
            return next(self.args, _END) is not _END  # type: ignore[call-overload]

    def stop_reading(self, reason: BaseException | None = None) -> None:
        """No more input is read; chunks not yet sent are cancelled (their consumer, if
        it waits, gets CancelledError).  ``reason``: what the consumer gets once it has
        the results that were read, if input is left."""
        with self.lock:
            if reason is not None and not self.closed:
                self.stopped = reason
            self.closed = True
            unread = list(self.chunks)
        for future in unread:
            future.cancel()
        self.pool.maps.discard(self)

    def read_all(self) -> None:
        """Read and queue the rest of the input now (the executor is shutting down, and
        the standard executor's map has read its input when it returns).  Not with
        ``buffersize``, which bounds the reading as the standard library's does.  At
        most ``MAX_READ_AT_SHUTDOWN`` tasks: an endless input must not hang the
        shutdown; the consumer gets RuntimeError where the reading stopped."""
        if self.buffersize is not None:
            return
        with self.lock:
            if self.closed:
                return
            self.read_budget = MAX_READ_AT_SHUTDOWN
            try:
                pieces = self.new_pieces()
            finally:
                unread = not self.exhausted and self.read_budget <= 0
                self.read_budget = None
            if unread:
                self.closed = True
                self.stopped = RuntimeError(
                    f"the executor shut down while this map's input was still being "
                    f"read; {MAX_READ_AT_SHUTDOWN} more tasks were read and run, but the "
                    f"input goes on (give map() buffersize= for an endless input)")
        if pieces:
            self.pool.enqueue(pieces, check=False)
