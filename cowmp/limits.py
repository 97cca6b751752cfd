"""Limits the manager thread enforces with a clock: per-task timeouts, the wait for a
dead worker's exit status, and recycling a worker whose private memory has grown past
``max_private_memory_per_child`` (docs/design.md §7, §9).

:class:`Limits` is a part of :class:`cowmp.pool_manager.Pool`.  It uses these attributes of the
pool: ``workers``, ``slot_array``, ``launcher``, ``max_private``, ``memory_check_at``,
``recycled``; and its methods ``worker_ended`` and ``release``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import slots
from .dispatch import Worker
from .memory import private_bytes

__all__ = ["MEMORY_CHECK_INTERVAL", "STATUS_WAIT", "Limits"]

#: seconds to wait for a dead worker's exit status before reporting it unknown
STATUS_WAIT = 5.0
#: with ``max_private_memory_per_child``, seconds between two readings of a working
#: worker's private memory (a reading costs the kernel about 12 ms per GiB it maps)
MEMORY_CHECK_INTERVAL = 1.0


class Limits:
    """Deadlines and memory readings (a part of :class:`cowmp.pool_manager.Pool`)."""

    workers: dict[int, Worker]
    slot_array: Any
    launcher: Any
    max_private: int | None
    memory_check_at: float | None  # the next reading of the workers' private memory
    recycled: int
    worker_ended: Callable[[Worker], None]
    release: Callable[[Worker], None]

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

    def deadline(self, w: Worker, slot: tuple[int, int, float] | None = None) -> float | None:
        """When ``w``'s running task passes its timeout (``slot``: a reading of its slot,
        else read now); a moment from now if the slot says no task runs yet."""
        if not w.inflight or w.kill_reason or w.pid is None:
            return None
        piece = w.inflight[0]
        if piece.job.timeout is None:
            return None
        if slot is None:
            slot = slots.read(self.slot_array, w.slot)
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
            slot = slots.read(self.slot_array, w.slot)
            deadline = self.deadline(w, slot)
            if slot is None or deadline is None or now < deadline:
                continue
            # still that task?  The worker may have finished it and begun another since
            if slots.read(self.slot_array, w.slot) != slot:
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

    def schedule_memory_check(self) -> None:
        """A worker was given work: read the workers' memory in a while, if no reading
        is due already."""
        if self.memory_check_at is None:
            self.memory_check_at = time.monotonic() + MEMORY_CHECK_INTERVAL
