"""Workers started as processes of a context, where no fork server can be used.

The executor's launcher when fork is missing (the fallback: loky's spawned processes),
or when the executor is given a context that does not fork (``spawn``, ``forkserver``).
Same interface as :class:`cowmp.zygote.ForkServer`: ``spawn(slot)`` returns the parent's
end of the worker's connection, and events ``("spawned", slot, pid)`` and
``("exited", pid, exit_code)`` are read when one of :meth:`waitables` is ready.
"""

from __future__ import annotations

import collections
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from . import handles, serialize, worker

__all__ = ["ProcessLauncher"]


def _worker_entry(conn: Any, slot: int, progress: Any, parent: int, setup: bytes,
                  max_tasks: int | None) -> None:
    # the initializer goes through cowmp's pickler, so that a function of the main
    # script is the re-imported module's own (its globals are those the tasks see)
    initializer, initargs = serialize.loads(setup)
    worker.run_worker(conn, slot, progress, parent, initializer, initargs, max_tasks,
                      forked=False)


class _Sentinel(int):
    """A process's sentinel, equal only to itself: its fd number is reused once it is
    closed, and a selector must not take the next process's for it."""

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other


class ProcessLauncher:
    def __init__(self, ctx: Any, progress: Any, initializer: Any, initargs: tuple,
                 max_tasks: int | None) -> None:
        self.ctx = ctx
        self.progress = progress
        self.setup = serialize.dumps((initializer, initargs),
                                     serialize.Snapshot.take(by_reference=False),
                                     "the initializer and its arguments")
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
            args=(theirs, slot, self.progress, os.getpid(), self.setup, self.max_tasks),
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
        for process in self.processes.values():
            if process.pid == pid and process.exitcode is None:
                if hasattr(signal, "SIGKILL"):
                    os.kill(pid, signal.SIGKILL)
                else:  # pragma: no cover - Windows
                    process.terminate()

    def has_event(self) -> bool:
        return bool(self.pending)

    def read_event(self, ready: Any = None) -> tuple:
        if self.pending:
            return self.pending.popleft()
        process = self.processes.pop(ready)
        process.join()
        return ("exited", process.pid, process.exitcode)

    def waitables(self) -> list:
        return list(self.processes)

    def stop(self, how: int = 0, timeout: float = 7.0) -> None:
        """Reap the workers: they leave on their own (``how`` 0), or get the signal
        ``how`` now (killed after ``timeout`` either way)."""
        for process in list(self.processes.values()):
            if how and process.exitcode is None and hasattr(signal, "SIGKILL"):
                try:
                    os.kill(process.pid, how)
                except ProcessLookupError:
                    pass
            process.join(timeout)
            if process.exitcode is None:
                self.kill(process.pid)
                process.join()
        self.processes.clear()

    def poll(self) -> int | None:
        return None
