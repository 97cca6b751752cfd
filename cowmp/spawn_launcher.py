"""Workers started as processes of a context, where no fork server can be used
(docs/design.md §7).

The executor's launcher when fork is missing (the fallback: loky's spawned processes),
or when the executor is given a context that does not fork (``spawn``, ``forkserver``):
a :class:`cowmp.launchers.Launcher`, as :class:`cowmp.fork_server.ForkServer` is.  A
worker's end is seen on its process's sentinel.
"""

from __future__ import annotations

import collections
import os
import signal
import time
from multiprocessing import connection
from multiprocessing import process as mp_process
from multiprocessing.connection import Connection
from typing import Any

from . import handles, serialize, worker
from .launchers import KILL_NOW, LEAVE, TERMINATE_GRACE, Event

__all__ = ["SpawnLauncher"]


def _worker_entry(conn: Any, slot: int, slot_array: Any, parent: int, setup: bytes,
                  initargs: tuple, max_tasks: int | None) -> None:
    # the initializer goes through cowmp's pickler, so that a function of the main
    # script is the re-imported module's own (its globals are those the tasks see); its
    # arguments are the process's, pickled by the context as it starts it, which is what
    # lets them hold locks, events and queues of that context
    initializer, loader = serialize.loads(setup)
    worker.run_worker(conn, slot, slot_array, parent, initializer, initargs, max_tasks,
                      forked=False, loader=loader)


class _Sentinel(int):
    """A process's sentinel, equal only to itself: its fd number is reused once it is
    closed, and a selector must not take the next process's for it."""

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


class SpawnLauncher:
    """Workers as processes of ``ctx``, reaped through their sentinels."""

    def __init__(self, ctx: Any, slot_array: Any, initializer: Any, initargs: tuple,
                 max_tasks: int | None, loader: tuple | None = None) -> None:
        """``loader``: ``(callable, args)`` that each worker runs first (no fork server
        loads the data once here: each worker loads its own copy)."""
        self.ctx = ctx
        self.slot_array = slot_array
        self.setup = serialize.dumps((initializer, loader),
                                     serialize.Snapshot.take(by_reference=False),
                                     "the initializer or the loader")
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.processes: dict[_Sentinel, Any] = {}
        self.pending: collections.deque[tuple] = collections.deque()
        self.pid = None
        self.spawned = 0

    def spawn(self, slot: int) -> Connection:
        self.spawned += 1
        ours, theirs = self.ctx.Pipe()
        handles.opened(ours, theirs)
        process = self.ctx.Process(
            target=_worker_entry,
            args=(theirs, slot, self.slot_array, os.getpid(), self.setup, self.initargs,
                  self.max_tasks),
            daemon=True,
            name=f"CowPoolWorker-{self.spawned}",
        )
        try:
            process.start()
        finally:
            handles.close(theirs)
        self.processes[_Sentinel(process.sentinel)] = process
        self.pending.append(("spawned", slot, process.pid))
        return ours

    def kill(self, pid: int) -> None:
        for process in list(self.processes.values()):
            if process.pid == pid and process.exitcode is None:
                _signal(process, KILL_NOW)

    def pending_event(self) -> Event | None:
        return self.pending.popleft() if self.pending else None

    def read_event(self, ready: Any) -> Event:
        process = self.processes.pop(ready)
        process.join()
        return ("exited", process.pid, process.exitcode)

    def waitables(self) -> list:
        return list(self.processes)

    def stop(self, how: int = LEAVE, timeout: float = 7.0) -> None:
        """Reap the workers: they leave on their own (:data:`LEAVE`), or get the signal
        ``how`` now; killed after ``timeout``, or half a second after the signal.  A
        worker's end is seen on its sentinel, which also works where SIGCHLD is ignored
        (nothing to reap)."""
        processes = list(self.processes.values())
        if how:
            for process in processes:
                _signal(process, how)
            timeout = min(timeout, TERMINATE_GRACE)
        deadline = time.monotonic() + timeout
        for process in processes:
            if not connection.wait([process.sentinel], max(0.0, deadline - time.monotonic())):
                _signal(process, KILL_NOW)
                connection.wait([process.sentinel])
            process.join(5)  # it has ended (or is ending): reap it
        self.processes.clear()

    def disown(self) -> None:
        """In a forked child: these workers are the parent's.  multiprocessing would
        terminate and join them at the child's exit (they are in its list of children)."""
        for process in self.processes.values():
            mp_process._children.discard(process)  # type: ignore[attr-defined]

    def exit_status(self) -> int | None:
        return None  # no process of its own


def _signal(process: Any, signum: int) -> None:
    try:
        if hasattr(signal, "SIGKILL"):
            os.kill(process.pid, signum)
        else:  # pragma: no cover - Windows
            process.terminate()
    except ProcessLookupError:
        pass  # gone already
