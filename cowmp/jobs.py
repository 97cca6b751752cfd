"""Work as the manager thread holds it: jobs, the pieces sent to workers, and how a
piece is pickled (docs/design.md §10).

A :class:`Job` is one ``submit()`` or one map chunk, with its future; a :class:`Piece`
is what one message to a worker carries: some of a job's tasks.  A job may be sent in
several pieces (a worker gave some back, a crash split it), each settled as it comes
back.  The :class:`Encoder` pickles a piece just before it is sent, in the manager
thread; a task that cannot be pickled fails alone, with an error naming what could not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from . import serialize, tuning, worker

__all__ = ["Encoder", "Job", "Piece", "describe_task"]


def describe_task(fn: Any, args: tuple) -> str:
    name = getattr(fn, "__qualname__", None) or serialize.short_repr(fn, 40)
    shown = ", ".join(serialize.short_repr(a, 30) for a in args[:3])
    return f"{name}({shown}{', ...' if len(args) > 3 else ''})"


class Job:
    """One ``submit()`` (``single``: its future gets the value) or one map chunk (its
    future gets ``(values, errors, plain)``, errors mapping an index to its exception,
    ``plain`` telling that the values hold no instance)."""

    __slots__ = ("args", "claimed", "errors", "fn", "fn_payload", "future", "kwargs",
                 "missing", "plain", "run", "single", "size", "source", "star", "timeout",
                 "values")

    def __init__(self, future: Any, fn: Any, args: list | None,
                 kwargs: list | None, single: bool, timeout: float | None, star: bool = True,
                 fn_payload: bytes | None = None, run: Any = None,
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
        return per_task is None or per_task >= tuning.UNTRACKED_TASK_SECONDS or bool(self.timeout)

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

    def describe(self, index: int) -> str:
        """Task ``index``, named for a message: ``fn(arg, ...)``."""
        try:
            return describe_task(self.fn, self.task_args(index))
        except Exception:  # noqa: BLE001 - the arguments are gone (a finished job)
            return f"#{index}"


class Piece:
    """What one message to a worker carries: some tasks of one job.  The manager thread
    pickles it (``payload``) just before it sends it, so that no thread waits for another
    one to pickle its work."""

    __slots__ = ("estimate", "id", "indices", "job", "payload", "size", "strikes", "track",
                 "tracked")
    _ids = itertools.count(1)

    def __init__(self, job: Job, indices: Any, track: bool = False, strikes: int = 0) -> None:
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

    def again(self, indices: Any = None) -> Piece:
        """A new piece (new id: the worker's slot may still name this one) for the same
        tasks, or those at ``indices``, to be sent again."""
        return Piece(self.job, self.indices if indices is None else indices, self.track,
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

    def settle(self, count: int, data: bytes, measured: tuple[float, int], size: int) -> None:
        """The outcomes of its first ``count`` tasks, in a worker's DONE message ``data``
        (values of ``size`` bytes after the header, then the exceptions), and the busy
        seconds of so many of them.  What cannot be unpickled here fails its task alone."""
        job = self.job
        view = memoryview(data)
        start = worker.DONE.size

        def describe(position: int) -> str:
            return job.describe(self.indices[position])

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
        job.settle_piece(self.indices[:count], values, errors, measured,
                         plain=view[start:start + 1] != serialize.SPLIT)
        if job.run is not None:
            job.run.refill()


class Encoder:
    """Pickles functions and pieces against the executor's snapshot (what its workers
    have already: shared objects and, for forked workers, ``__main__``'s definitions go
    by reference)."""

    def __init__(self, snapshot: serialize.Snapshot) -> None:
        self.snapshot = snapshot

    def function(self, fn: Any) -> bytes:
        return serialize.dumps(fn, self.snapshot, f"the function {serialize.short_repr(fn)}")

    def encode(self, piece: Piece) -> bool:
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
                job.fn_payload = self.function(job.fn)
            except serialize.TaskPicklingError as error:
                job.fail_all(piece.indices, serialize.without_frames(error))
                return False
        while True:
            tasks, kwargs, bad = self._tasks(job, piece.indices)
            if not bad:
                piece.set_payload(tasks, kwargs)
                return True
            for index, error in bad.items():  # they fail alone; the rest is pickled again
                job.fail(index, error)
            piece.indices = [index for index in piece.indices if index not in bad]
            if not piece.indices:
                return False

    def _tasks(self, job: Job,
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

    def _task_error(self, job: Job, index: int) -> BaseException:
        """What could not be pickled of task ``index``, named."""
        args = job.task_args(index)
        try:
            for position, arg in enumerate(args):
                serialize.dumps(arg, self.snapshot,
                                f"argument {position} ({serialize.short_repr(arg)}) of "
                                f"{describe_task(job.fn, args)}")
            if job.kwargs is not None:
                for name, value in job.kwargs[index].items():
                    serialize.dumps(value, self.snapshot,
                                    f"keyword argument {name}={serialize.short_repr(value)}"
                                    f" of {describe_task(job.fn, args)}")
        except serialize.TaskPicklingError as error:
            return error
        except BaseException as error:  # noqa: BLE001 - SystemExit from a __reduce__ too
            problem = serialize.TaskPicklingError(
                f"cannot pickle the arguments of {describe_task(job.fn, args)}: "
                f"{serialize.describe(error)}")
            problem.__cause__ = error
            return problem
        return serialize.TaskPicklingError(
            f"cannot pickle the arguments of {describe_task(job.fn, args)}")
