"""CowProcessPoolExecutor: a concurrent.futures pool that shares, heals and never forks
from threads (DESIGN §2.5, §2.6).

The executor forks a fork server (:mod:`cowmp.zygote`) when it is created, while the
caller is normally still single-threaded: that is the snapshot its workers share.  Every
worker, the first ones and every replacement, is forked by that server, never by this
process, whose executor runs a manager thread.  The manager thread sends pieces of work
to the workers, collects outcomes, enforces per-task timeouts, and replaces a worker that
dies, fails only the task it was running, and sends the rest of its work elsewhere.

Where there is no fork (or with a context that does not fork) the workers are processes
of the context (:mod:`cowmp.launcher`): same behaviour, nothing shared.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import os
import selectors
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures import TimeoutError as futures_TimeoutError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection, sharedctypes
from typing import Any

from . import forking, handles, serialize, worker
from .channel import Channel, Message
from .context import _cowfork_context as cowfork_context
from .context import is_forking_cowfork
from .launcher import ProcessLauncher
from .memory import ProcessMemory, parse_size, private_bytes, processes
from .progress import make_bar
from .zygote import KILL_NOW, LEAVE, TERMINATE, ForkServer

__all__ = ["CowProcessPoolExecutor", "TaskTimeoutError", "WorkerDiedError"]

LOGGER = logging.getLogger("concurrent.futures")

#: automatic chunking aims at pieces that take about this long in a worker (and no more
#: than a quarter of a worker's share of a map of known length; at the end, a chunk per
#: worker: the end is balanced by taking work back)
CHUNK_SECONDS = 0.05
#: pieces a busy worker may have waiting behind the one it runs (map chunks known to be
#: short only), and at most this many bytes and expected seconds of them
PREFETCH_PIECES = 16
PREFETCH_BYTES = 128 * 1024  # well under a socket's default buffer (208 KiB)
PREFETCH_SECONDS = 1.5 * CHUNK_SECONDS
#: ... and only behind a piece expected to take at most this long (a longer one may hide
#: a slow task, behind which a queued piece would wait)
PREFETCH_BEHIND_SECONDS = 0.002
#: map tasks measured shorter than this run without recording each start (it would cost
#: about as much as the task); a worker crash then reruns that chunk, recorded
UNTRACKED_TASK_SECONDS = 20e-6
#: tasks of a function measured before map trusts the time they take (for prefetching
#: and untracked tasks); until then its chunks grow from one task per worker with the
#: tasks completed, in pieces the first measurements expect to be short
PROBE_TASKS = 8
#: until then, a chunk has at most this many times as many tasks as have completed
PROBE_GROWTH = 4
#: an idle worker takes back a busy one's unstarted tasks if they are two or more and, when
#: their time is known, expected to take at least this long (else the round trip costs
#: more than it saves)
STEAL_MIN_SECONDS = 0.0005
#: tasks read ahead of the results by map, at least (a few chunks per worker otherwise),
#: and at most, beyond those chunks
READ_AHEAD_TASKS = 4096
MAX_READ_AHEAD_TASKS = 1 << 17
#: tasks in an automatic chunk read from an iterator (held in memory until it is sent)
MAX_CHUNK_TASKS = 1 << 15
#: tasks a map reads at most when the executor shuts down (the rest of an input longer
#: than that, or endless, raises RuntimeError when the consumer reaches it)
MAX_READ_AT_SHUTDOWN = 1 << 20
#: workers that die before they are ready, in a row, before the pool is declared broken
STARTUP_FAILURES = 3
#: seconds to wait for a dead worker's exit status before reporting it unknown
STATUS_WAIT = 5.0
#: worker deaths a task may be in flight at (its run unfinished, or finished with its
#: outcome lost) before it fails with WorkerDiedError instead of running once more
MAX_STRIKES = 2
#: seconds ``worker_pids`` waits at most for workers being started to be known
PID_WAIT = 5.0
#: seconds ``shutdown(cancel_futures=True)`` waits at most for the manager thread to give
#: idle workers what was submitted before it
HAND_OUT_WAIT = 1.0
#: with ``max_private_memory_per_child``, seconds between two readings of a working
#: worker's private memory (a reading costs the kernel about 12 ms per GiB it maps)
MEMORY_CHECK_INTERVAL = 1.0


class WorkerDiedError(BrokenProcessPool):
    """The worker running this task died (killed by a signal, ``os._exit``, a crash).

    Only this task fails: the executor replaced the worker and goes on.  A subclass of
    :class:`~concurrent.futures.process.BrokenProcessPool`, which the standard executor
    raises in this case, so existing ``except`` clauses still catch it.
    """

    def __init__(self, message: str, pid: int | None = None,
                 exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


class TaskTimeoutError(*(  # type: ignore[misc]
    (futures_TimeoutError,) if futures_TimeoutError is TimeoutError
    else (futures_TimeoutError, TimeoutError)
)):
    """A task ran past its timeout; its worker was killed and replaced.

    Both :class:`TimeoutError` and :class:`concurrent.futures.TimeoutError` (distinct
    classes on Python 3.10, one since 3.11).
    """


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "with an unknown status"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"with exit code {exitcode}"


def _describe_task(fn: Any, args: tuple) -> str:
    name = getattr(fn, "__qualname__", None) or serialize.short_repr(fn, 40)
    shown = ", ".join(serialize.short_repr(a, 30) for a in args[:3])
    return f"{name}({shown}{', ...' if len(args) > 3 else ''})"


class _Job:
    """One ``submit()`` (``single``: its future gets the value) or one map chunk (its
    future gets ``(values, errors, plain)``, errors mapping an index to its exception,
    ``plain`` telling that the values hold no instance)."""

    __slots__ = ("args", "claimed", "errors", "fn", "fn_payload", "future", "kwargs",
                 "missing", "plain", "run", "single", "size", "source", "star", "timeout",
                 "values")

    def __init__(self, future: Future | _Chunk, fn: Any, args: list | None,
                 kwargs: list | None, single: bool, timeout: float | None, star: bool = True,
                 fn_payload: bytes | None = None, run: _MapRun | None = None,
                 size: int | None = None, source: Callable[[], list] | None = None) -> None:
        self.future = future
        self.run = run  # the map this chunk belongs to, which measures its tasks
        self.fn = fn
        self.fn_payload = fn_payload
        self.args = args  # argument tuples, or single arguments if not star
        # ... or, for a chunk of a list, tuple or range, read by the manager thread just
        # before they are pickled (``source()``): the thread that reads them touches
        # every object, and copies its page if the fork server shares it
        self.source = source
        self.size = len(args) if args is not None else size  # tasks
        self.kwargs = kwargs
        self.single = single
        self.star = star
        self.timeout = timeout
        self.values: list | None = None  # made when a first piece is settled
        self.errors: dict[int, BaseException] = {}
        self.missing = self.size
        self.claimed = False
        self.plain = True  # its values came as plain data (no instance: nothing to free)

    def materialize(self) -> None:
        """Read the arguments from ``source``.  A sequence that shrank since the map
        began gives fewer: the chunk ends there, as iterating it would have."""
        if self.args is not None or self.source is None:
            return
        self.args = self.source()
        self.source = None
        if len(self.args) < self.size:
            self.size = self.missing = len(self.args)

    def task_args(self, index: int) -> tuple:
        args = self.args[index]
        return args if self.star else (args,)

    @property
    def per_task(self) -> float | None:
        """Seconds a task takes, as its map measured them (None: unknown, or not a map)."""
        return None if self.run is None else self.run.per_task

    def tracking(self) -> bool:
        """Record each task's start, so that a crash names its task?  Not for map tasks
        measured too short (it would cost about as much as the task)."""
        per_task = self.per_task
        return per_task is None or per_task >= UNTRACKED_TASK_SECONDS or bool(self.timeout)

    def estimate(self, tasks: int) -> float:
        """Seconds that many of its tasks are expected to take (0 if unknown)."""
        per_task = self.per_task
        return 0.0 if per_task is None else per_task * tasks

    def prefetchable(self) -> bool:
        """May wait in a busy worker's connection?  Only map chunks known to be short
        (else a task could wait behind a long one while another worker is idle)."""
        return self.per_task is not None and not self.timeout

    def claim(self) -> bool:
        """Mark the future running when its first piece is sent; False if cancelled."""
        if self.claimed:
            return not self.future.done()
        self.claimed = True
        return self.future.set_running_or_notify_cancel()

    def settle_piece(self, indices: Any, values: list, errors: dict,
                     measured: tuple[float, int], plain: bool = False) -> None:
        """The outcomes of the tasks at ``indices`` (errors by position in the piece), and
        the busy seconds of so many of them."""
        seconds, tasks = measured
        self.plain = self.plain and plain
        if self.run is not None:
            self.run.completed += len(indices)
            if seconds > 0 and tasks:
                self.run.measure(seconds, tasks)
        if self.values is None and len(values) == self.size:
            self.values = values  # the whole job in one piece: no copy
        else:
            mine = self.all_values()
            for index, value in zip(indices, values, strict=True):
                mine[index] = value
        for position, error in errors.items():
            self.errors[indices[position]] = error
        self.missing -= len(indices)
        if not self.missing:
            self.finish()

    def all_values(self) -> list:
        if self.values is None:
            self.values = [None] * self.size
        return self.values

    def fail(self, index: int, error: BaseException) -> None:
        self.errors[index] = error
        self.missing -= 1
        if not self.missing:
            self.finish()

    def cancel(self) -> bool:
        """Cancel the future if its work has not begun (waiters are told at once)."""
        if not self.future.cancel():
            return False
        self.claim()  # moves it to cancelled-and-notified: wait() and as_completed see it
        return True

    def finish(self) -> None:
        if self.future.done():
            if not self.claimed:
                self.claim()  # cancelled while queued: tell its waiters
            return
        if not self.claimed:
            self.claim()
        if self.single:
            if self.errors:
                self.future.set_exception(self.errors[0])
            else:
                self.future.set_result(self.all_values()[0])
        else:
            self.future.set_result((self.all_values(), self.errors, self.plain))
        self.fn = self.args = self.kwargs = self.fn_payload = self.source = None

    def fail_all(self, indices: Any, error: BaseException) -> None:
        for index in indices:
            self.fail(index, error)


class _Piece:
    """What one message to a worker carries: some tasks of one job.  The manager thread
    pickles it (``payload``) just before it sends it, so that no thread waits for another
    one to pickle its work."""

    __slots__ = ("estimate", "id", "indices", "job", "payload", "size", "strikes", "track",
                 "tracked")
    _ids = itertools.count(1)

    def __init__(self, job: _Job, indices: Any, track: bool = False, strikes: int = 0) -> None:
        self.id = next(self._ids)
        self.job = job
        self.indices = indices
        self.track = track  # record each task's start even if the job would not
        self.tracked = False  # decided when it is pickled
        self.payload: tuple[bytes, ...] | None = None
        self.size = 0  # of the payload
        self.estimate = 0.0  # seconds it is expected to take (when it is pickled)
        # worker deaths its tasks were in flight at, not provably finished (see recover)
        self.strikes = strikes

    def again(self, indices: Any = None) -> _Piece:
        """A new piece (new id: the worker's slot may still name this one) for the same
        tasks, or those at ``indices``, to be sent again."""
        return _Piece(self.job, self.indices if indices is None else indices, self.track,
                      self.strikes)

    def set_payload(self, tasks: bytes, kwargs: bytes = b"") -> None:
        job = self.job
        self.tracked = self.track or job.tracking()
        self.estimate = job.estimate(len(self.indices))
        flags = ((worker.STAR if job.star else 0) | (worker.TIMED if job.timeout else 0)
                 | (worker.TRACKED if self.tracked else 0)
                 | (worker.SHORT if 0 < self.estimate < worker.HOLD_SECONDS else 0))
        function = job.fn_payload
        header = worker.HEADER.pack(self.id, len(self.indices), flags, len(function),
                                    len(kwargs))
        # sent one after the other, not joined
        self.payload = (header, function, kwargs, tasks)
        self.size = len(header) + len(function) + len(kwargs) + len(tasks)


class _Worker:
    __slots__ = ("assigned", "conn", "exitcode", "eof_at", "inflight", "inflight_bytes",
                 "inflight_seconds", "kill_reason", "pid", "ready", "recycling", "retiring",
                 "slot", "worked", "yielding")

    def __init__(self, slot: int, conn: Any) -> None:
        self.slot = slot
        self.conn = conn
        self.pid: int | None = None
        self.ready = False
        self.retiring = False
        self.inflight: collections.deque[_Piece] = collections.deque()
        self.inflight_bytes = 0  # of their payloads
        self.inflight_seconds = 0.0  # of their estimates
        self.assigned = 0
        self.exitcode: int | None = None
        self.eof_at: float | None = None
        self.kill_reason: tuple | None = None  # (piece id, index, timeout) of a timeout
        self.worked = False  # given work since its memory was last read
        self.recycling = False  # over the private memory limit: leaves when idle
        self.yielding: int | None = None  # the piece asked back (worker.YIELD), if any

    def add(self, piece: _Piece) -> None:
        self.inflight.append(piece)
        self.inflight_bytes += piece.size
        self.inflight_seconds += piece.estimate
        self.assigned += len(piece.indices)
        self.worked = True

    def done(self) -> _Piece:
        piece = self.inflight.popleft()
        self.inflight_bytes -= piece.size
        self.inflight_seconds -= piece.estimate
        return piece

    def prefetched(self) -> tuple[int, int, float]:
        """Pieces waiting behind the running one: how many, their bytes and seconds."""
        running = self.inflight[0]
        return (len(self.inflight) - 1,
                self.inflight_bytes - running.size,
                self.inflight_seconds - running.estimate)


class _Ended:
    """Stands for a manager thread that has ended (joined at once)."""

    def join(self, timeout: float | None = None) -> None:
        return None


_ENDED: Any = _Ended()
_live_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
_pid = [os.getpid()]  # this process's id, kept current across forks (no system call)
_global_shutdown = False


def _after_fork_in_child() -> None:
    """In a forked child the parent's executors are not ours: their handles were closed
    by the fork (:mod:`cowmp.handles`), and they are forgotten."""
    _pid[0] = os.getpid()
    for pool in list(_live_pools):
        if pool.launcher is not None:
            pool.launcher.disown()
    _live_pools.clear()


def _python_exit() -> None:
    """At interpreter exit, as the standard executor does: finish pending work, stop."""
    global _global_shutdown
    _global_shutdown = True
    for pool in list(_live_pools):
        if pool.owner == os.getpid():
            pool.shutdown(wait=True, cancel_futures=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_python_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_python_exit)


class _Waiter:
    """``multiprocessing.connection.wait`` with a persistent selector where there is one
    (POSIX): registrations change only when the set of connections does.  A connection
    is unregistered (:meth:`forget`) before it is closed: the kernel's epoll set would
    otherwise keep it while a forked process holds a copy."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector() if os.name == "posix" else None
        if self.selector is not None:
            handles.opened(self.selector)
        self.registered: dict[Any, int] = {}

    def wait(self, objects: list, timeout: float | None) -> list:
        if self.selector is None:  # pragma: no cover - Windows
            return connection.wait(objects, timeout)
        wanted = set(objects)
        for obj in [o for o in self.registered if o not in wanted]:
            self.forget(obj)
        for obj in objects:
            if obj not in self.registered:
                fd = int(obj) if isinstance(obj, int) else obj.fileno()
                self.selector.register(fd, selectors.EVENT_READ, obj)
                self.registered[obj] = fd
        return [key.data for key, _ in self.selector.select(timeout)]

    def forget(self, obj: Any) -> None:
        fd = self.registered.pop(obj, None)
        if fd is not None and self.selector is not None:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def close(self) -> None:
        handles.close(self.selector)


class _Pool:
    """The executor's state and its manager thread (kept apart from the facade, so that
    a forgotten executor can be collected and shut down)."""

    def __init__(self, max_workers: int, ctx: Any, initializer: Any, initargs: tuple,
                 max_tasks: int | None, task_timeout: float | None,
                 max_private: int | None = None) -> None:
        self.owner = os.getpid()
        self.eager = initializer is None
        self.max_workers = max_workers
        self.max_tasks = max_tasks
        self.max_private = max_private
        self.memory_check_at: float | None = None  # next reading of workers' USS
        self.recycled = 0  # workers replaced for their private memory
        self.task_timeout = task_timeout
        self.queue: collections.deque[_Piece] = collections.deque()
        self.lock = threading.Lock()
        # held by the manager thread while it works: a fork that cowmp makes waits until
        # the thread waits, holding nothing (forking.quiesced)
        self.active = threading.RLock()
        self.shutdown_requested = False
        self.terminating: int | None = None  # the signal that ends the workers now
        self.broken: str | None = None
        self.thread: Any = None  # the manager thread, _ENDED once it has ended
        self.workers: dict[int, _Worker] = {}
        self.startup_failures = 0
        self.waiting = False  # the manager is (about to be) blocked waiting
        self.requeue_at = 0  # where the next piece given back is queued
        self.pids_changed = threading.Condition()  # a worker's pid became known
        # set by the manager once it has handed out what it can (shutdown waits for it)
        self.dispatched: threading.Event | None = None
        # maps that may still read input (shutdown reads the rest of it)
        self.maps: weakref.WeakSet[_MapRun] = weakref.WeakSet()
        # measured (seconds, tasks), decayed, by pickled function, for map's chunk sizes
        self.task_seconds: dict[bytes, tuple[tuple[float, float], int]] = {}
        self.waiter = _Waiter()
        self.wake_r = self.wake_w = None
        self.launcher: Any = None
        try:
            self.wake_r, self.wake_w = socket.socketpair()
            handles.opened(self.wake_r, self.wake_w)
            self.wake_r.setblocking(False)
            self.wake_w.setblocking(False)
            forks = is_forking_cowfork(ctx) or (
                getattr(ctx, "_name", None) == "fork" and hasattr(os, "fork"))
            size = max_workers * worker.SLOT_FIELDS
            if forks:
                self.progress = sharedctypes.RawArray("d", size)
                self.snapshot = serialize.Snapshot.take(by_reference=True)
                self.launcher = ForkServer(self.progress, initializer, initargs, max_tasks,
                                           getattr(ctx, "_name", None), max_workers)
            else:
                self.progress = ctx.RawArray("d", size)
                self.snapshot = serialize.Snapshot.take(by_reference=False)
                self.launcher = ProcessLauncher(ctx, self.progress, initializer, initargs,
                                                max_tasks)
            _live_pools.add(self)
            for slot in range(max_workers):
                self.spawn(slot)
            while self.launcher.has_event():  # the first workers' pids, known already
                self.handle_event(self.launcher.read_event())
            self.start_thread()
        except BaseException:
            if self.launcher is not None:
                self.launcher.stop(KILL_NOW)
            self.close_handles()
            raise

    # -- called from any thread ---------------------------------------------------------

    def check_usable(self) -> None:
        if self.owner != _pid[0]:
            raise RuntimeError(
                f"this executor belongs to process {self.owner}; a forked child must "
                "create its own"
            )
        if self.broken:
            raise BrokenProcessPool(self.broken)
        if self.shutdown_requested:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def remember_task_seconds(self, fn_payload: bytes,
                              measured: tuple[tuple[float, float], int]) -> None:
        if len(self.task_seconds) >= 64 and fn_payload not in self.task_seconds:
            self.task_seconds.pop(next(iter(self.task_seconds)))  # the oldest
        self.task_seconds[fn_payload] = measured

    def pickle_function(self, fn: Any) -> bytes:
        return serialize.dumps(fn, self.snapshot, f"the function {serialize.short_repr(fn)}")

    def encode(self, piece: _Piece) -> bool:
        """Pickle ``piece`` (in the manager thread); a task that cannot be pickled fails
        alone, with an error that names what could not be.  False if no task is left."""
        job = piece.job
        if job.args is None:
            job.materialize()
            if job.size < len(piece.indices):  # the sequence shrank
                piece.indices = [index for index in piece.indices if index < job.size]
                if not job.size:
                    job.finish()
                if not piece.indices:
                    return False
        if job.fn_payload is None:
            try:
                job.fn_payload = self.pickle_function(job.fn)
            except serialize.TaskPicklingError as error:
                job.fail_all(piece.indices, serialize.without_frames(error))
                return False
        while True:
            tasks, kwargs, bad = self._pickle_tasks(job, piece.indices)
            if not bad:
                piece.set_payload(tasks, kwargs)
                return True
            for index, error in bad.items():  # they fail alone; the rest is pickled again
                job.fail(index, error)
            piece.indices = [index for index in piece.indices if index not in bad]
            if not piece.indices:
                return False

    def _pickle_tasks(self, job: _Job,
                      indices: Any) -> tuple[bytes, bytes, dict[int, BaseException]]:
        """The pickled arguments and keyword arguments of the tasks at ``indices``, and
        the errors of those that cannot be pickled, by index."""
        args = job.args if len(indices) == len(job.args) else [job.args[i] for i in indices]
        shared = serialize.holds_shared(self.snapshot, args, job.star, job.kwargs)
        tasks, failed = serialize.pack_list(args, self.snapshot, shared=shared)
        kwargs = b""
        if job.kwargs is not None:
            try:
                kwargs = serialize.dumps([job.kwargs[i] for i in indices], self.snapshot,
                                         "keyword arguments")
            except serialize.TaskPicklingError:
                failed = dict.fromkeys(range(len(indices)))
        bad = {indices[position]: serialize.without_frames(self._task_error(job, indices[position]))
               for position in failed}
        return tasks, kwargs, bad

    def _task_error(self, job: _Job, index: int) -> BaseException:
        """What could not be pickled of task ``index``, named."""
        args = job.task_args(index)
        try:
            for position, arg in enumerate(args):
                serialize.dumps(arg, self.snapshot,
                                f"argument {position} ({serialize.short_repr(arg)}) of "
                                f"{_describe_task(job.fn, args)}")
            if job.kwargs is not None:
                for name, value in job.kwargs[index].items():
                    serialize.dumps(value, self.snapshot,
                                    f"keyword argument {name}={serialize.short_repr(value)}"
                                    f" of {_describe_task(job.fn, args)}")
        except serialize.TaskPicklingError as error:
            return error
        except BaseException as error:  # noqa: BLE001 - SystemExit from a __reduce__ too
            problem = serialize.TaskPicklingError(
                f"cannot pickle the arguments of {_describe_task(job.fn, args)}: "
                f"{serialize.describe(error)}")
            problem.__cause__ = error
            return problem
        return serialize.TaskPicklingError(
            f"cannot pickle the arguments of {_describe_task(job.fn, args)}")

    def enqueue(self, pieces: list[_Piece], check: bool = True) -> None:
        """Queue work (``check``: refuse it once shut down, as ``submit`` does; work of a
        map that began before the shutdown is still taken)."""
        with self.lock:
            if check:
                self.check_usable()
            elif self.broken:
                raise BrokenProcessPool(self.broken)
            self.queue.extend(pieces)
        if self.waiting:  # else the manager sees the queue before it waits again
            self.wake()

    def start_thread(self) -> None:
        """Start the manager thread (with the workers: it hears of their start)."""
        self.thread = threading.Thread(target=self.run, name="cowmp-executor", daemon=True)
        self.thread.start()

    def worker_pids(self) -> list[int]:
        """The workers' process ids; those still being started are waited for (at most
        PID_WAIT seconds, and not in the manager thread, which hears of them)."""
        deadline = time.monotonic() + PID_WAIT
        with self.pids_changed:
            while True:
                workers = list(self.workers.values())
                if all(w.pid is not None for w in workers) or self.broken or (
                        threading.current_thread() is self.thread
                        or not isinstance(self.thread, threading.Thread)):
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    break
                self.pids_changed.wait(min(left, 0.1))
        return [w.pid for w in workers if w.pid is not None]

    def enqueue_here(self, pieces: list[_Piece]) -> None:
        """``enqueue`` from the manager thread itself (no wake-up, no usability check:
        work of a map already running; a broken pool fails it)."""
        with self.lock:
            if not self.broken:
                self.queue.extend(pieces)
                return
        error = BrokenProcessPool(self.broken)
        for piece in pieces:
            piece.job.fail_all(piece.indices, error)

    def wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake, or closed

    def shutdown(self, wait: bool, cancel_futures: bool, terminate: int | None = None) -> None:
        """No new work.  ``cancel_futures``: cancel what has not started.  ``terminate``
        (a signal): also end the workers now, failing the tasks they run.  Otherwise maps
        begun before read the rest of their input now (as the standard executor's map,
        which reads it all when called), so that their results can be consumed later."""
        if self.owner != _pid[0]:
            return  # an executor inherited through a fork: not this process's
        if not (cancel_futures or terminate):
            for run in list(self.maps):
                run.read_all()
        elif not terminate:
            self.hand_out()
        with self.lock:
            self.shutdown_requested = True
            if terminate:
                self.terminating = terminate
            if cancel_futures or terminate:
                for run in list(self.maps):
                    run.stop_reading(CancelledError())
                running = []  # partly sent already (a requeued rest): must still run
                while True:
                    try:
                        piece = self.queue.popleft()
                    except IndexError:
                        break
                    if not piece.job.cancel() and not piece.job.future.done():
                        running.append(piece)
                self.queue.extend(running)
            thread = self.thread
        self.wake()
        if wait and thread is not threading.current_thread():
            thread.join()

    def hand_out(self) -> None:
        """Let the manager thread give idle workers what is queued (cancel_futures
        cancels only what is still queued after that: as the standard executor, whose
        manager has moved work to its call queue by then, a task submitted while a
        worker was idle has begun)."""
        thread = self.thread
        if not isinstance(thread, threading.Thread) or thread is threading.current_thread():
            return
        with self.lock:  # a shutdown in another thread may have asked already
            dispatched = self.dispatched = self.dispatched or threading.Event()
        self.wake()
        dispatched.wait(HAND_OUT_WAIT)

    def close_handles(self) -> None:
        """Close what the pool opened in this process (after its launcher has stopped)."""
        handles.close(self.wake_r, self.wake_w)
        self.waiter.close()
        _live_pools.discard(self)

    # -- the manager thread -------------------------------------------------------------

    def run(self) -> None:
        with forking.own_thread(self.active):
            try:
                self.loop()
            except BaseException as error:  # noqa: BLE001 - a bug: every future must end
                LOGGER.critical("the executor's manager thread failed", exc_info=True)
                self.break_pool(f"the executor's manager thread failed: {error!r}",
                                cause=error)
            finally:
                # what is left only closes handles (under the registry's lock) and waits:
                # a fork may happen meanwhile
                self.active.release()
                try:
                    self.stop_workers()
                finally:
                    self.active.acquire()
                    self.thread = _ENDED  # the pool no longer holds the thread

    def loop(self) -> None:
        while True:
            while self.launcher.has_event():  # before dispatch: replacements' pids too
                self.handle_event(self.launcher.read_event())
            if self.terminating:
                self.terminate_workers()
            self.dispatch()
            dispatched, self.dispatched = self.dispatched, None
            if dispatched is not None:
                dispatched.set()
            if self.finished():
                return
            launcher_waitables = self.launcher.waitables()
            by_conn = {w.conn.conn: w for w in self.workers.values() if w.conn}
            waitables = [self.wake_r, *launcher_waitables, *by_conn]
            queued = len(self.queue)
            self.waiting = True  # from now on, enqueue() wakes us
            if len(self.queue) != queued or self.terminating:  # no wait: work came in
                self.waiting = False
                continue
            timeout = self.next_wakeup()
            self.active.release()  # a fork may happen while this thread waits
            try:
                ready = self.waiter.wait(waitables, timeout)
            finally:
                self.active.acquire()
            self.waiting = False
            for obj in ready:
                if obj is self.wake_r:
                    self.drain_wakeups()
                elif obj in by_conn:
                    self.worker_message(by_conn[obj])
                elif obj in launcher_waitables:
                    self.launcher_event(obj)
            self.check_deadlines()
            self.check_memory()

    def finished(self) -> bool:
        if self.broken:
            return True
        return self.shutdown_requested and not self.queue and not any(
            w.inflight for w in self.workers.values()
        )

    def drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def spawn(self, slot: int) -> None:
        # a replacement starts with a clean slot: what the dead worker recorded there
        # would name a piece that may be queued again, under the same id
        base = slot * worker.SLOT_FIELDS
        self.progress[base:base + worker.SLOT_FIELDS] = [0.0] * worker.SLOT_FIELDS
        conn = self.launcher.spawn(slot)
        self.workers[slot] = _Worker(slot, Channel(conn, nonblocking=True))

    def terminate_workers(self) -> None:
        """End every worker now (``terminate_workers()``, or an exception leaving the
        ``with`` block): what they run fails, nothing is queued again or replaced; the
        launcher ends them when the loop ends (:meth:`stop_workers`)."""
        self.fail_all_work(BrokenProcessPool(
            "the executor's workers were terminated while this task was pending "
            "(terminate_workers(), kill_workers(), or an exception that left the "
            "executor's with block)"))

    def dispatch(self) -> None:
        """Send queued pieces: first one to each idle worker, then more to busy ones
        (prefetch, only when every worker is up: one still starting would otherwise find
        the work taken).  Each worker's pieces go in one write, sent before the next
        worker's are pickled: an idle worker starts at once.  A worker left idle with
        nothing queued takes work back from a busy one (:meth:`take_back`)."""
        if self.broken:
            return
        workers = list(self.workers.values())
        if self.queue:
            for w in workers:
                if not w.inflight and self.can_take(w):
                    payload = self.give(w, prefetch=False)
                    if payload is not None:
                        self.send(w, [payload])
            if self.queue and all(self.usable(w) for w in workers):
                self.prefetch([w for w in workers if w.inflight and self.can_take(w)
                               and self.prefetch_low(w) and self.on_time(w)])
        if not self.queue:
            self.take_back(workers)

    def prefetch(self, workers: list[_Worker]) -> None:
        """Queue pieces behind the running ones of busy ``workers``: a piece each in
        turn (so that no worker holds the queue while another will be idle), each
        worker's in one write."""
        batches: dict[_Worker, list[Message]] = {w: [] for w in workers}
        while self.queue and workers:
            for w in list(workers):
                payload = self.give(w, prefetch=True)
                if payload is None:
                    workers.remove(w)
                else:
                    batches[w].append(payload)
        for w, batch in batches.items():
            if batch:
                self.send(w, batch)

    def take_back(self, workers: list[_Worker]) -> None:
        """For each idle worker, ask the busy worker holding the most unstarted tasks to
        give them back (:data:`worker.YIELD`): it stops before its next task and returns
        the rest, which :meth:`piece_done` queues again, split for the idle workers."""
        idle = sum(1 for w in workers if not w.inflight and self.can_take(w))
        if not idle:
            return
        candidates = []
        for w in workers:
            if w.inflight and w.yielding is None and w.conn is not None and not w.kill_reason:
                tasks, target = self.unstarted(w)
                if target is not None:
                    candidates.append((tasks, w.slot, w, target))
        candidates.sort(reverse=True)
        for _, _, w, target in candidates[:idle]:
            w.yielding = target
            self.progress[w.slot * worker.SLOT_FIELDS + worker.YIELD] = target

    def unstarted(self, w: _Worker) -> tuple[int, int | None]:
        """The tasks ``w`` holds but has not begun, if they are worth taking back (two
        or more, and expected to take long enough), and the piece from which to ask
        for them: ``(0, None)`` if none."""
        running = w.inflight[0]
        later = sum(len(piece.indices) for piece in itertools.islice(w.inflight, 1, None))
        slot = self.read_slot(w.slot)
        if slot is None:
            return 0, None  # being written: next time
        piece_id, index, _ = slot
        tasks, target = later, None
        if piece_id != running.id:  # not begun
            tasks, target = tasks + len(running.indices), running.id
        elif running.tracked and 0 <= index < len(running.indices) - 1:
            tasks, target = tasks + len(running.indices) - index - 1, running.id
        elif later:
            target = w.inflight[1].id
        per_task = running.job.per_task
        if tasks < 2 or (per_task is not None and tasks * per_task < STEAL_MIN_SECONDS):
            return 0, None
        return tasks, target

    def on_time(self, w: _Worker) -> bool:
        """May pieces wait behind ``w``'s running one?  Only behind a short piece (a
        round trip would cost about as much as it), and not one running past twice its
        expected time: a piece queued behind a task far longer than its map's others
        could only be taken back once that task ends."""
        running = w.inflight[0]
        if not 0 < running.estimate <= PREFETCH_BEHIND_SECONDS:
            return False
        slot = self.read_slot(w.slot)
        if slot is None or slot[0] != running.id:
            return True  # not begun
        return time.monotonic() - slot[2] <= 2 * running.estimate + 0.001

    def send(self, w: _Worker, payloads: list[Message]) -> None:
        try:
            w.conn.send(payloads)
        except OSError:
            w.retiring = True  # it is dying: its pieces are recovered when it is gone

    def give(self, w: _Worker, prefetch: bool) -> Message | None:
        """Move the queue's next piece to ``w`` and return its payload; None if there is
        none that ``w`` may take now."""
        while self.queue and self.can_take(w):
            piece = self.queue[0]
            if prefetch and not piece.job.prefetchable():
                return None
            if not piece.job.claim():
                self.queue.popleft()
                continue  # cancelled while queued
            if self.max_tasks is not None:
                self.fit_quota(piece, self.max_tasks - w.assigned)
            if piece.payload is None and not self.encode(piece):
                self.queue.popleft()
                continue  # none of its tasks could be pickled
            if prefetch and not self.prefetch_room(w, piece):
                return None
            self.queue.popleft()
            w.add(piece)
            if self.max_private is not None and self.memory_check_at is None:
                self.memory_check_at = time.monotonic() + MEMORY_CHECK_INTERVAL
            return piece.payload
        return None

    def prefetch_low(self, w: _Worker) -> bool:
        """Top a worker up only when half its prefetch is used: a write per few pieces."""
        count, size, seconds = w.prefetched()
        return (count <= PREFETCH_PIECES // 2 and size <= PREFETCH_BYTES // 2
                and seconds <= PREFETCH_SECONDS / 2)

    def prefetch_room(self, w: _Worker, piece: _Piece) -> bool:
        count, size, seconds = w.prefetched()
        return (count < PREFETCH_PIECES
                and size + piece.size <= PREFETCH_BYTES
                and seconds + piece.estimate <= PREFETCH_SECONDS)

    def fit_quota(self, piece: _Piece, room: int) -> None:
        """A worker replaced after ``max_tasks_per_child`` tasks takes no more than that:
        the rest of a larger piece (the head of the queue) goes back behind it."""
        if len(piece.indices) <= room:
            return
        indices = list(piece.indices)
        self.queue.insert(1, _Piece(piece.job, indices[room:], piece.track, piece.strikes))
        piece.indices = indices[:room]
        piece.payload = None

    def usable(self, w: _Worker) -> bool:
        """May ``w`` be given work?  Once it is ready; or, without an initializer (its
        start is then only a fork), as soon as it exists: its connection holds the work
        until it reads it, and a worker that starts late is not left without any."""
        return w.ready or self.eager

    def can_take(self, w: _Worker) -> bool:
        if (not self.usable(w) or w.conn is None or w.retiring or w.kill_reason
                or w.yielding is not None):
            return False
        return self.max_tasks is None or w.assigned < self.max_tasks

    def worker_message(self, w: _Worker) -> None:
        conn = w.conn
        if conn is None:  # closed by an earlier event of this round
            return
        try:
            messages = conn.receive()
        except (EOFError, OSError):
            self.release(w)
            if w.exitcode is not None:
                self.worker_ended(w)
            return
        self.requeue_at = 0  # tasks given back go first, in the order they come
        for data in messages:
            self.handle_message(w, data)

    def handle_message(self, w: _Worker, data: bytes) -> None:
        kind = data[:1]
        if kind == worker.DONE_KIND:
            self.piece_done(w, data)
        elif kind == worker.READY:
            w.ready = True
            self.startup_failures = 0
        elif kind == worker.INIT_FAILED:
            error = serialize.decode_errors(memoryview(data)[1:],
                                            lambda index: "the initializer")[0]
            self.break_pool(
                f"a worker's initializer failed: {serialize.describe(error)}; the "
                "process pool is not usable anymore", cause=error)
        else:
            raise ValueError(f"unknown message from worker {w.pid}: {bytes(data[:16])!r}")

    def piece_done(self, w: _Worker, data: bytes) -> None:
        """A piece's outcomes.  What cannot be unpickled here fails its task alone."""
        _, piece_id, count, seconds, timed, retiring, size = worker.DONE.unpack_from(data)
        piece = w.done()
        if piece.id != piece_id:
            raise RuntimeError(f"worker {w.pid} answered piece {piece_id}, not {piece.id}")
        asked = w.yielding == piece.id
        if asked:
            w.yielding = None
            self.progress[w.slot * worker.SLOT_FIELDS + worker.YIELD] = 0
        if count < len(piece.indices):
            self.give_back(piece, piece.indices[count:], split=asked)
        if count:
            self.settle(piece, count, data, (seconds, timed), size)
        w.retiring = w.retiring or bool(retiring)
        if w.recycling and not w.inflight:
            self.release(w)

    def settle(self, piece: _Piece, count: int, data: bytes, measured: tuple[float, int],
               size: int) -> None:
        """The outcomes of the first ``count`` tasks of ``piece``, in ``data`` after the
        DONE header (values of ``size`` bytes, then the exceptions)."""
        job = piece.job
        view = memoryview(data)
        start = worker.DONE.size

        def describe(position: int) -> str:
            return self.describe(job, piece.indices[position])

        try:
            values, failed = serialize.unpack_list(view[start:start + size])
        except BaseException as error:  # noqa: BLE001 - SystemExit from a reduce too
            values = [None] * count
            failed = dict.fromkeys(range(count), serialize.without_frames(error))
        try:
            errors = serialize.decode_errors(view[start + size:], describe)
        except BaseException as error:  # noqa: BLE001
            errors = {}
            failed.update(dict.fromkeys(range(count), serialize.without_frames(error)))
        for position, error in failed.items():
            if position not in errors:
                problem = serialize.TaskUnpicklingError(
                    f"the result of task {describe(position)} cannot be unpickled in "
                    f"this process: {serialize.describe(error)}")
                problem.__cause__ = error
                errors[position] = problem
        job.settle_piece(piece.indices[:count], values, errors, measured,
                         plain=view[start:start + 1] != serialize.SPLIT)
        if job.run is not None:
            job.run.refill()

    def give_back(self, piece: _Piece, rest: Any, split: bool) -> None:
        """A worker gave back the tasks at ``rest`` of ``piece`` unstarted: queue them
        first (``split``: the piece it was asked for, in a part per worker, at most)."""
        parts = min(len(rest), self.max_workers) if split else 1
        step = -(-len(rest) // parts)
        for start in range(0, len(rest), step):
            self.queue.insert(self.requeue_at, piece.again(rest[start:start + step]))
            self.requeue_at += 1

    @staticmethod
    def describe(job: _Job, index: int) -> str:
        try:
            return _describe_task(job.fn, job.task_args(index))
        except Exception:  # noqa: BLE001 - the arguments are gone (a finished job)
            return f"#{index}"

    def launcher_event(self, ready: Any) -> None:
        try:
            event = self.launcher.read_event(ready)
        except (EOFError, OSError):
            code = self.launcher.poll()
            self.break_pool(f"the fork server (pid {self.launcher.pid}) died "
                            f"{describe_exit(code)}; the process pool is not usable "
                            "anymore")
            return
        self.handle_event(event)

    def handle_event(self, event: tuple) -> None:
        if event[0] == "spawned":
            _, slot, pid = event
            w = self.workers.get(slot)
            if w is not None and w.pid is None:
                w.pid = pid
                with self.pids_changed:
                    self.pids_changed.notify_all()
        elif event[0] == "exited":
            _, pid, exitcode = event
            for w in list(self.workers.values()):
                if w.pid == pid:
                    w.exitcode = exitcode
                    if w.conn is None:
                        self.worker_ended(w)

    def worker_ended(self, w: _Worker) -> None:
        """Both the end of its connection and its exit status are in: settle its work."""
        if self.workers.get(w.slot) is w:
            del self.workers[w.slot]
        if self.terminating:
            return  # its work has failed already; no replacement
        expected = w.retiring and not w.inflight and w.exitcode == 0
        if not expected:
            self.recover(w)
        if not w.ready and not self.broken and not self.shutdown_requested:
            self.startup_failures += 1
            if self.startup_failures >= STARTUP_FAILURES:
                self.break_pool(f"{self.startup_failures} workers in a row died before "
                                f"they were ready, the last {describe_exit(w.exitcode)}")
        if not self.broken and not (self.shutdown_requested and not self.queue):
            try:
                self.spawn(w.slot)
            except OSError as error:
                self.break_pool(f"cannot start a replacement worker: {error}", cause=error)


    def read_slot(self, slot: int) -> tuple[int, int, float] | None:
        base = slot * worker.SLOT_FIELDS
        p = self.progress
        piece_id, index, started = p[base], p[base + 1], p[base + 2]
        if p[base] != piece_id or p[base + 1] != index:
            return None  # being written: read again later
        return int(piece_id), int(index), started

    def recover(self, w: _Worker) -> None:
        """A worker died: settle what it held.  Its slot tells what it was doing:

        * a task it ran (recorded one by one) fails: it is the cause, or it was killed;
        * a piece it was reading, or whose outcomes it was sending, or whose tasks it ran
          unrecorded (too short): the cause is one of its tasks, unknown; each of them has
          one strike more and runs again, alone (or recorded), so that a second death
          names it;
        * pieces whose tasks provably finished (their outcomes died with the worker),
          and those it had not begun, run again as they are.

        A task at ``MAX_STRIKES`` fails with WorkerDiedError instead of running again: a
        task runs at most twice unless its earlier runs provably finished."""
        slot = self.read_slot(w.slot)
        running = next((position for position, piece in enumerate(w.inflight)
                        if slot is not None and slot[0] == piece.id), None)
        requeue: list[_Piece] = []
        for position, piece in enumerate(w.inflight):
            if running is None:
                # no piece begun: the first was being received, unless it died at once
                if position == 0 and w.ready:
                    requeue.extend(self.strike(w, piece, piece.indices, phase="reading"))
                else:
                    requeue.append(piece)
            elif position != running:
                requeue.append(piece)  # finished (outcomes lost) or not begun
            else:
                index = slot[1]
                indices = list(piece.indices)
                if index == worker.READING:
                    requeue.extend(self.strike(w, piece, indices, phase="reading"))
                elif (ran := worker.sent_count(index)) is not None:
                    # the tasks that ran, outcomes lost; those it gave back never began
                    if ran:
                        requeue.extend(self.strike(w, piece, indices[:ran],
                                                   phase="sending the results of",
                                                   alone=piece.tracked))
                    if indices[ran:]:
                        requeue.append(piece.again(indices[ran:]))
                elif index == worker.UNTRACKED or not piece.tracked:
                    requeue.extend(self.strike(w, piece, indices, phase="running",
                                               alone=False))
                else:
                    piece.job.fail(indices[index], self.death_error(w, piece, index))
                    if indices[:index]:
                        requeue.append(_Piece(piece.job, indices[:index], piece.track,
                                              piece.strikes))
                    if indices[index + 1:]:
                        requeue.append(_Piece(piece.job, indices[index + 1:], piece.track,
                                              piece.strikes))
        w.inflight.clear()
        self.queue.extendleft(reversed(requeue))

    def strike(self, w: _Worker, piece: _Piece, indices: list, phase: str,
               alone: bool = True) -> list[_Piece]:
        """The tasks of ``piece`` at ``indices`` may have killed ``w``: one strike more;
        at MAX_STRIKES they fail, else they run again (``alone``: each in a piece of its
        own; else together, recorded one by one).  Returns the pieces to run again."""
        strikes = piece.strikes + 1
        if strikes >= MAX_STRIKES:
            for index in indices:
                piece.job.fail(index, WorkerDiedError(
                    f"the worker (pid {w.pid}) {phase} task "
                    f"{self.describe(piece.job, index)} died {describe_exit(w.exitcode)}, "
                    f"and so did a worker before it with this task in flight; it is not "
                    f"run again", w.pid, w.exitcode))
            return []
        if alone:
            return [_Piece(piece.job, [index], True, strikes) for index in indices]
        return [_Piece(piece.job, indices, True, strikes)]

    def death_error(self, w: _Worker, piece: _Piece, culprit: int) -> BaseException:
        task = self.describe(piece.job, piece.indices[culprit])
        if w.kill_reason is not None and w.kill_reason[:2] == (piece.id, culprit):
            return TaskTimeoutError(
                f"task {task} ran past its timeout of {w.kill_reason[2]:g} s; its worker "
                f"(pid {w.pid}) was stopped and replaced")
        return WorkerDiedError(
            f"the worker (pid {w.pid}) running task {task} died "
            f"{describe_exit(w.exitcode)}; the executor replaced it", w.pid, w.exitcode)

    def next_wakeup(self) -> float | None:
        deadlines = []
        now = time.monotonic()
        for w in self.workers.values():
            if w.conn is None and w.exitcode is None and w.eof_at is not None:
                deadlines.append(w.eof_at + STATUS_WAIT)
            deadline = self.deadline(w)
            if deadline is not None:
                deadlines.append(deadline)
        if self.memory_check_at is not None:
            deadlines.append(self.memory_check_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def deadline(self, w: _Worker) -> float | None:
        if not w.inflight or w.kill_reason or w.pid is None:
            return None
        piece = w.inflight[0]
        if piece.job.timeout is None:
            return None
        slot = self.read_slot(w.slot)
        if slot is None:
            return time.monotonic() + 0.01
        piece_id, index, started = slot
        if piece_id != piece.id or index < 0:  # not running a task: look again soon
            return time.monotonic() + min(0.05, piece.job.timeout)
        return started + piece.job.timeout

    def check_deadlines(self) -> None:
        now = time.monotonic()
        for w in list(self.workers.values()):
            if w.conn is None and w.exitcode is None and w.eof_at is not None:
                if now >= w.eof_at + STATUS_WAIT:
                    self.worker_ended(w)  # its status never came
                continue
            deadline = self.deadline(w)
            if deadline is None or now < deadline:
                continue
            slot = self.read_slot(w.slot)
            if slot is None or slot[0] != w.inflight[0].id:
                continue
            w.kill_reason = (slot[0], slot[1], w.inflight[0].job.timeout)
            self.launcher.kill(w.pid)

    def check_memory(self) -> None:
        """Read the private memory (USS) of the workers given work since the last
        reading; one over ``max_private_memory_per_child`` takes no more work and is
        replaced once it has finished what it has."""
        if self.memory_check_at is None or time.monotonic() < self.memory_check_at:
            return
        assert self.max_private is not None
        for w in list(self.workers.values()):
            if not w.worked or w.pid is None or w.conn is None or w.retiring:
                continue
            w.worked = bool(w.inflight)
            try:
                private = private_bytes(w.pid)
            except (ProcessLookupError, PermissionError):
                continue  # it is ending: its end is handled as any other
            if private > self.max_private:
                w.retiring = w.recycling = True
                self.recycled += 1
                if not w.inflight:
                    self.release(w)
        busy = any(w.worked for w in self.workers.values())
        self.memory_check_at = time.monotonic() + MEMORY_CHECK_INTERVAL if busy else None

    def release(self, w: _Worker) -> None:
        """Close a worker's connection (it has closed its end, or is idle and to leave):
        it is replaced when its exit status comes in."""
        self.waiter.forget(w.conn.conn)
        handles.close(w.conn.conn)
        w.conn = None
        w.eof_at = time.monotonic()

    def break_pool(self, message: str, cause: BaseException | None = None) -> None:
        if self.broken:
            return
        self.broken = message
        error = BrokenProcessPool(message)
        if cause is not None:
            error.__cause__ = cause
        self.fail_all_work(error)

    def fail_all_work(self, error: BaseException) -> None:
        """Fail every queued and running task with ``error``."""
        pieces = list(self.queue)
        self.queue.clear()
        for w in self.workers.values():
            pieces.extend(w.inflight)
            w.inflight.clear()
        for piece in pieces:
            piece.job.fail_all(piece.indices, error)
        for run in list(self.maps):
            # reads no more (not under its lock: the consumer may hold it, reading input)
            run.stopped = error
            run.closed = True

    def stop_workers(self) -> None:
        """Close every worker's connection (they leave), stop and reap the launcher,
        close the pool's own handles."""
        if self.queue and not self.broken:
            self.break_pool("the executor stopped with work still queued")
        for w in self.workers.values():
            if w.conn is not None:
                self.waiter.forget(w.conn.conn)
                handles.close(w.conn.conn)
                w.conn = None
        # a broken pool's running tasks have failed already: their workers need not finish
        how = self.terminating or (TERMINATE if self.broken else LEAVE)
        try:
            self.launcher.stop(how)
        finally:
            self.workers.clear()
            self.close_handles()


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    return min(count, 61) if sys.platform == "win32" else count


def _check_timeout(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


class CowProcessPoolExecutor(Executor):
    """A :class:`concurrent.futures.ProcessPoolExecutor` whose workers share the parent's
    memory (module docstring).

    ``max_workers`` (default: the CPUs this process may use), ``mp_context`` (default:
    cowmp's ``"cowfork"``; a context that does not fork starts its workers as its own
    processes), ``initializer(*initargs)`` run in every worker, replacements included.
    ``max_tasks_per_child``: a worker is replaced after running that many tasks (a map
    chunk counts its tasks).  ``max_private_memory_per_child`` (bytes, or a string such
    as ``"512MiB"``): a worker whose private memory (USS: what it has copied from the
    shared heap or allocated itself, not the pages it shares, which RSS would count)
    passes it takes no more work and is replaced once it has finished what it has; read
    about once a second while it works.  ``task_timeout``: seconds a task may run; past it, its
    worker is killed and replaced and its future fails with :class:`TimeoutError`.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple = (),
                 *, max_tasks_per_child: int | None = None,
                 task_timeout: float | None = None,
                 max_private_memory_per_child: int | str | None = None) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(
                max_tasks_per_child, int
            ):
                raise TypeError("max_tasks_per_child must be an int")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        max_private = None if max_private_memory_per_child is None else parse_size(
            max_private_memory_per_child, "max_private_memory_per_child")
        if mp_context is None:
            mp_context = cowfork_context
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._pool = _Pool(max_workers, mp_context, initializer, tuple(initargs),
                           max_tasks_per_child, _check_timeout(task_timeout, "task_timeout"),
                           max_private)
        weakref.finalize(self, _Pool.shutdown, self._pool, False, False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)``; return its Future (as the standard one)."""
        return self.schedule(fn, args, kwargs, timeout=self._pool.task_timeout)

    def schedule(self, fn: Callable[..., Any], args: Iterable[Any] = (),
                 kwargs: dict[str, Any] | None = None, *,
                 timeout: float | None = None) -> Future:
        """``submit`` with a per-task ``timeout`` in seconds (the executor's
        ``task_timeout`` when omitted)."""
        timeout = _check_timeout(timeout, "timeout")
        if timeout is None:
            timeout = self._pool.task_timeout
        pool = self._pool
        pool.check_usable()
        future: Future = Future()
        job = _Job(future, fn, [tuple(args)], [dict(kwargs)] if kwargs else None,
                   single=True, timeout=timeout)
        pool.enqueue([_Piece(job, range(1))])
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int | None = None,
            buffersize: int | None = None, progress: Any = False,
            task_timeout: float | None = None) -> Iterator[Any]:
        """``fn`` over the iterables, results in order, lazily.

        ``chunksize``: tasks per message to a worker; by default chosen from the measured
        time per task (pieces of about 50 ms, at most a quarter of each worker's share).
        Input is read ahead of the results by at most ``buffersize`` tasks (default: a
        few chunks per worker), so infinite iterables work.  ``timeout`` bounds the wait
        for each result from the call (as the standard map); ``task_timeout`` bounds each
        task's run.  ``progress=True`` shows a progress bar (tqdm if installed).
        """
        if chunksize is not None and (isinstance(chunksize, bool) or chunksize < 1):
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and (isinstance(buffersize, bool) or buffersize < 1):
            raise ValueError("buffersize must be None or > 0.")
        task_timeout = _check_timeout(task_timeout, "task_timeout")
        if task_timeout is None:
            task_timeout = self._pool.task_timeout
        self._pool.check_usable()
        end_time = None if timeout is None else timeout + time.monotonic()
        run = _MapRun(self._pool, fn, iterables, chunksize, buffersize, task_timeout,
                      progress)
        run.fill()
        return _MapIterator.over(run, end_time)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As the standard executor's: no new tasks; ``cancel_futures`` cancels those not
        started; ``wait`` waits for the rest, then for the workers to leave.  A ``map``
        begun before reads the rest of its input now (``buffersize`` aside), as the
        standard map has when it returns: its results can be consumed afterwards."""
        self._pool.shutdown(wait, cancel_futures)

    def terminate_workers(self) -> None:
        """End the workers now with SIGTERM (as Python 3.14's executor): the tasks they
        run fail with BrokenProcessPool, queued tasks are cancelled, and the executor is
        shut down; returns once every worker is gone."""
        self._pool.shutdown(True, True, terminate=TERMINATE)

    def kill_workers(self) -> None:
        """:meth:`terminate_workers` with SIGKILL."""
        self._pool.shutdown(True, True, terminate=KILL_NOW)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        """Leaving the ``with`` block normally waits for the work, as the standard
        executor does.  Leaving it with an exception (Ctrl-C's KeyboardInterrupt, an
        error) does not: queued work is cancelled and the workers are terminated, so the
        exception is not held up by tasks that nobody will use."""
        if exc_type is None:
            self.shutdown(wait=True)
        else:
            self.terminate_workers()
        return False

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the live workers, started when the executor was created (or
        since, to replace others): one per worker once they are forked, which this
        waits for (a few milliseconds after creation, at most a few seconds)."""
        return self._pool.worker_pids()

    @property
    def fork_server_pid(self) -> int | None:
        """The fork server's process id (None where workers are not forked)."""
        return self._pool.launcher.pid

    @property
    def recycled_workers(self) -> int:
        """Workers replaced so far because their private memory passed
        ``max_private_memory_per_child``."""
        return self._pool.recycled

    def memory(self) -> list[ProcessMemory]:
        """The memory of this process (role ``"parent"``), of the fork server and of each
        worker (see :mod:`cowmp.memory`; ``cowmp.memory.totals`` adds them up)."""
        roles = {os.getpid(): "parent"}
        if self.fork_server_pid is not None:
            roles[self.fork_server_pid] = "fork server"
        roles.update(dict.fromkeys(self.worker_pids, "worker"))
        return processes(roles)


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


class _Chunk:
    """The outcome of one map chunk: what map needs of a Future, lighter (no lock of its
    own: its map's condition, notified only when the consumer waits for this chunk)."""

    __slots__ = ("callback", "run", "state", "value")

    def __init__(self, run: _MapRun) -> None:
        self.run = run
        self.state = _PENDING
        self.value: Any = None
        self.callback: Callable[[_Chunk], object] | None = None

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

    def add_done_callback(self, callback: Callable[[_Chunk], object]) -> None:
        self.callback = callback

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the chunk; meanwhile read more input when the executor is short of
        work (an iterator's items are read by this thread: :meth:`_MapRun.refill`)."""
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


class _MapIterator(itertools.chain):
    """map's results: chunks of results flattened in C (no Python frame per result),
    with ``close()`` as a generator has (stops reading input, cancels what is queued).
    Each chunk is handed over as a deque emptied as it goes: a result yielded is no
    longer held."""

    _run: _MapRun
    _chunks: Iterator[list]

    @classmethod
    def over(cls, run: _MapRun, end_time: float | None) -> _MapIterator:
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


class _MapRun:
    """One ``map()``: reads the input in chunks as the results are consumed."""

    def __init__(self, pool: _Pool, fn: Any, iterables: tuple, chunksize: int | None,
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
        self.chunks: collections.deque[_Chunk] = collections.deque()
        self.buffered = 0
        self.fn_payload = pool.pickle_function(fn)
        # what this function's tasks took, the previous maps' included (no probe needed
        # then): seconds and tasks, both decayed by half at every chunk, so that a chunk
        # weighs as many tasks as it has (small chunks, whose fixed costs make their
        # tasks look longer, weigh little); and how many tasks were measured in all
        self.measured, self.evidence = pool.task_seconds.get(self.fn_payload,
                                                             ((0.0, 0.0), 0))
        self.tail: int | None = None  # the size of the last chunks, once planned
        self.per_task: float | None = None
        self.update_per_task()
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
        self.waiting: _Chunk | None = None
        self.hungry = False  # the executor is short of work: read more input (iterators)
        self.bar = make_bar(self.total, progress) if progress else None
        pool.maps.add(self)

    def update_per_task(self) -> None:
        seconds, tasks = self.measured
        if self.evidence >= PROBE_TASKS and tasks:  # else a first call's costs dominate
            self.per_task = seconds / tasks

    def measure(self, seconds: float, tasks: int) -> None:
        """A chunk's tasks kept a worker busy ``seconds`` (called by the manager)."""
        self.measured = (0.5 * self.measured[0] + seconds, 0.5 * self.measured[1] + tasks)
        self.evidence += tasks
        self.update_per_task()
        self.pool.remember_task_seconds(self.fn_payload, (self.measured, self.evidence))

    def guess(self) -> float | None:
        """Seconds per task from what was measured, however little (an overstatement:
        first calls cost more)."""
        seconds, tasks = self.measured
        return seconds / tasks if tasks else None

    def next_size(self) -> int:
        if self.chunksize is not None:
            return self.chunksize
        workers = self.pool.max_workers
        if self.per_task is not None:
            per_task = max(self.per_task, 1e-7)
            size = int(CHUNK_SECONDS / per_task)
            if self.total is not None:
                # and at least four chunks per worker (as Pool makes them): while the
                # workers run some, the parent pickles the next and unpickles the last
                size = min(size, -(-self.total // (4 * workers)))
            # once what is left is no more than a chunk per worker, it is split evenly
            # into a chunk per worker: a worker that ends early takes back what another
            # has not begun, so the end needs no tail of small chunks (they would cost
            # the parent CPU time, which the workers may need)
            if self.remaining is not None:
                if self.tail is None and self.remaining <= size * workers:
                    self.tail = -(-self.remaining // workers)
                if self.tail is not None:
                    size = min(size, self.tail)
            if self.sequences is None:  # read into memory ahead of its turn: bounded
                size = min(size, MAX_CHUNK_TASKS)
        else:  # probing: one task per worker first, then up to four times as many as have
            # completed, in chunks that the first measurements expect to be short; no
            # worker takes more than its share of a short input (the others would wait)
            size = max(1, PROBE_GROWTH * self.completed)
            guess = self.guess()
            if guess:
                size = min(size, max(1, int(CHUNK_SECONDS / guess)))
            if self.remaining is not None:
                size = min(size, -(-self.remaining // workers))
        if self.pool.max_tasks is not None:
            size = min(size, self.pool.max_tasks)
        return max(1, size)

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

    def locked_new_pieces(self) -> list[_Piece]:
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

    def new_pieces(self) -> list[_Piece]:
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
            future = _Chunk(self)
            self.chunks_read += 1
            job = _Job(future, self.fn, args, None, single=False, timeout=self.timeout,
                       star=self.star, fn_payload=self.fn_payload, run=self, size=count,
                       source=source)
            if self.bar is not None:
                future.add_done_callback(functools.partial(self._advance, job))
            self.chunks.append(future)
            self.buffered += count
            pieces.append(_Piece(job, range(count)))
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

    def _advance(self, job: _Job, future: _Chunk) -> None:
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
