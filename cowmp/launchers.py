"""How the executor starts and ends its workers: the :class:`Launcher` interface
(docs/design.md §7).

Two implementations: :class:`cowmp.fork_server.ForkServer` (workers forked by a fork
server that holds the executor's snapshot; the default wherever there is ``fork``) and
:class:`cowmp.spawn_launcher.SpawnLauncher` (workers started as processes of a context
that does not fork: ``spawn``, ``forkserver``, or loky's processes in the fallback).

Events tell the pool what happened to its workers: ``("spawned", slot, pid)`` once a
worker's process id is known, ``("exited", pid, exit_code)`` once it has been reaped,
with ``exit_code = -signum`` for a death by signal, as in multiprocessing; and
``("broken", message)`` when the launcher cannot start workers any more (a fork server's
loader failed).
"""

from __future__ import annotations

import signal
from multiprocessing.connection import Connection
from typing import Any, Protocol

__all__ = ["KILL_NOW", "LEAVE", "TERMINATE", "TERMINATE_GRACE", "Event", "Launcher"]

#: how :meth:`Launcher.stop` ends the workers: they leave when their connection closes
#: (``LEAVE``), or now, by SIGTERM or SIGKILL
LEAVE = 0
TERMINATE = int(getattr(signal, "SIGTERM", 15))
KILL_NOW = int(getattr(signal, "SIGKILL", 9))
#: seconds the workers get to end after the signal of a stop that terminates them,
#: before they are killed
TERMINATE_GRACE = 0.5

#: ``("spawned", slot, pid)``, ``("exited", pid, exit_code)`` or ``("broken", message)``
Event = tuple


class Launcher(Protocol):
    """What the pool needs of whatever starts its workers."""

    #: the fork server's process id; None where there is no such process
    pid: int | None

    def spawn(self, slot: int) -> Connection:
        """Start a worker for ``slot``; return the parent's end of its connection (the
        worker may not exist yet: its ``"spawned"`` event says when it does)."""

    def kill(self, pid: int) -> None:
        """Kill worker ``pid`` now (SIGKILL): a task ran past its timeout."""

    def pending_event(self) -> Event | None:
        """An event known without waiting (None: wait on :meth:`waitables`)."""

    def read_event(self, ready: Any) -> Event:
        """The event behind ``ready``, one of :meth:`waitables` that a wait found ready.
        Raises EOFError or OSError if the launcher itself has died."""

    def waitables(self) -> list:
        """What the manager thread waits on, with the workers' connections, through a
        :class:`cowmp.channel.Waiter`: objects with ``fileno()``, or descriptor numbers
        that compare by identity (a number is reused once its descriptor is closed)."""

    def exit_status(self) -> int | None:
        """The launcher's own exit status, once it has ended (None: it runs, or there is
        no such process)."""

    def stop(self, how: int = LEAVE) -> None:
        """End every worker (``how``: :data:`LEAVE`, :data:`TERMINATE`, :data:`KILL_NOW`)
        and reap them; returns when they are gone."""

    def disown(self) -> None:
        """In a forked child of the executor's process: forget these workers, which are
        the parent's."""
