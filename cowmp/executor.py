"""CowProcessPoolExecutor: a concurrent.futures pool that shares, heals and never forks
from threads (docs/design.md §7).

The executor forks a fork server (:mod:`cowmp.fork_server`) when it is created, while
the caller is normally still single-threaded: that is the snapshot its workers share.
Every worker, the first ones and every replacement, is forked by that server, never by
this process, whose executor runs a manager thread (:mod:`cowmp.pool_manager`).  That thread
sends pieces of work to the workers (:mod:`cowmp.dispatch`), collects outcomes, enforces
per-task timeouts (:mod:`cowmp.limits`), and replaces a worker that dies, failing only
the task it was running and sending the rest of its work elsewhere
(:mod:`cowmp.crashes`).  ``map`` reads its input in chunks (:mod:`cowmp.mapping`).

Where there is no fork (or with a context that does not fork) the workers are processes
of the context (:mod:`cowmp.spawn_launcher`): same behaviour, nothing shared.

This module is the public face: arguments are checked here, before anything starts.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from .context import cowfork_context
from .crashes import TaskTimeoutError, WorkerDiedError
from .jobs import Job, Piece
from .launchers import KILL_NOW, TERMINATE
from .mapping import MapIterator, MapRun
from .memory import ProcessMemory, parse_size, processes
from .pool_manager import Pool

__all__ = ["CowProcessPoolExecutor", "TaskTimeoutError", "WorkerDiedError"]


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    return min(count, 61) if sys.platform == "win32" else count


def _check_timeout(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_count(value: object, name: str, minimum: int) -> None:
    """TypeError unless ``value`` is an int (not a bool); ValueError below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")


def check_callable(value: object, name: str) -> None:
    """TypeError unless ``value`` is None or callable."""
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable, not {type(value).__name__}")


def check_worker_options(initializer: Callable[..., object] | None,
                         max_tasks_per_child: int | None, task_timeout: float | None,
                         max_private_memory_per_child: int | str | None,
                         ) -> tuple[float | None, int | None]:
    """The checks of the options that every worker follows (an error names the
    option); returns ``task_timeout`` in seconds and ``max_private_memory_per_child``
    in bytes (each None when not given).  Also what cowmp.dask checks on the client."""
    check_callable(initializer, "initializer")
    if max_tasks_per_child is not None:
        check_count(max_tasks_per_child, "max_tasks_per_child", 1)
    max_private = None if max_private_memory_per_child is None else parse_size(
        max_private_memory_per_child, "max_private_memory_per_child")
    return _check_timeout(task_timeout, "task_timeout"), max_private


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
    about once a second while it works.  ``task_timeout``: seconds a task may run; past
    it, its worker is killed and replaced and its future fails with
    :class:`TimeoutError`.

    ``loader(*loader_args)``: the data the workers share is loaded by the fork server
    itself, started as a new interpreter (it inherits no thread and nothing of this
    process: safe in a Jupyter kernel, a web server, any threaded process, and this
    process keeps none of the data).  It runs once per executor; what it returns is
    shared (frozen, immortal where the interpreter allows) and is :func:`cowmp.loaded`
    in every worker, replacements included.  Tasks and results then travel by value, as
    with spawned workers.  Where workers are not forked, each worker runs the loader.
    """

    def __init__(self, max_workers: int | None = None, mp_context: Any = None,
                 initializer: Callable[..., object] | None = None, initargs: tuple = (),
                 *, max_tasks_per_child: int | None = None,
                 task_timeout: float | None = None,
                 max_private_memory_per_child: int | str | None = None,
                 loader: Callable[..., object] | None = None,
                 loader_args: Iterable[Any] = ()) -> None:
        if max_workers is None:
            max_workers = _default_workers()
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(f"max_workers must be an int, not {type(max_workers).__name__}")
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        task_timeout, max_private = check_worker_options(
            initializer, max_tasks_per_child, task_timeout, max_private_memory_per_child)
        check_callable(loader, "loader")
        if mp_context is None:
            mp_context = cowfork_context
        self._max_workers = max_workers
        self._mp_context = mp_context
        self._pool = Pool(max_workers, mp_context, initializer, tuple(initargs),
                           max_tasks_per_child, task_timeout, max_private,
                           None if loader is None else (loader, tuple(loader_args)))
        weakref.finalize(self, Pool.shutdown, self._pool, False, False)

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
        job = Job(future, fn, [tuple(args)], [dict(kwargs)] if kwargs else None,
                   single=True, timeout=timeout)
        pool.enqueue([Piece(job, range(1))])
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
        run = MapRun(self._pool, fn, iterables, chunksize, buffersize, task_timeout,
                      progress)
        run.fill()
        return MapIterator.over(run, end_time)

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
