"""Giving work to workers: the parent's record of each worker, dispatch, prefetch, and
taking work back from a busy worker for an idle one (docs/design.md §10).

:class:`Dispatch` is a part of :class:`cowmp.pool_manager.Pool`, kept here so that the rules for
who gets which piece read in one place.  It uses these attributes of the pool: ``queue``
(pieces not yet sent), ``workers`` (slot -> :class:`Worker`), ``slot_array``,
``encoder``, ``broken``, ``eager``, ``max_tasks``, ``max_private``, ``max_workers``,
``requeue_at``; and its method ``schedule_memory_check``.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable
from typing import Any

from . import slots
from .channel import Message
from .jobs import Piece
from .tuning import (
    PREFETCH_BEHIND_SECONDS,
    PREFETCH_BYTES,
    PREFETCH_PIECES,
    PREFETCH_SECONDS,
    STEAL_MIN_SECONDS,
)

__all__ = ["Dispatch", "Worker"]


class Worker:
    """A worker as the manager thread sees it: its connection, the pieces sent to it
    and not yet answered (``inflight``, oldest first: the one it runs, then those
    prefetched behind it), and what is known of its state."""

    __slots__ = ("assigned", "conn", "exitcode", "eof_at", "inflight", "inflight_bytes",
                 "inflight_seconds", "kill_reason", "pid", "ready", "recycling", "retiring",
                 "slot", "worked", "yielding")

    def __init__(self, slot: int, conn: Any) -> None:
        self.slot = slot
        self.conn = conn
        self.pid: int | None = None
        self.ready = False
        self.retiring = False
        self.inflight: collections.deque[Piece] = collections.deque()
        self.inflight_bytes = 0  # of their payloads
        self.inflight_seconds = 0.0  # of their estimates
        self.assigned = 0
        self.exitcode: int | None = None
        self.eof_at: float | None = None
        self.kill_reason: tuple | None = None  # (piece id, index, timeout) of a timeout
        self.worked = False  # given work since its memory was last read
        self.recycling = False  # over the private memory limit: leaves when idle
        self.yielding: int | None = None  # the piece asked back (slots.YIELD), if any

    def add(self, piece: Piece) -> None:
        self.inflight.append(piece)
        self.inflight_bytes += piece.size
        self.inflight_seconds += piece.estimate
        self.assigned += len(piece.indices)
        self.worked = True

    def done(self) -> Piece:
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


class Dispatch:
    """Who gets which piece, and when (a part of :class:`cowmp.pool_manager.Pool`)."""

    queue: collections.deque[Piece]
    workers: dict[int, Worker]
    slot_array: Any
    encoder: Any
    broken: str | None
    eager: bool
    max_tasks: int | None
    max_private: int | None
    max_workers: int
    requeue_at: int
    schedule_memory_check: Callable[[], None]

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

    def prefetch(self, workers: list[Worker]) -> None:
        """Queue pieces behind the running ones of busy ``workers``: a piece each in
        turn (so that no worker holds the queue while another will be idle), each
        worker's in one write."""
        batches: dict[Worker, list[Message]] = {w: [] for w in workers}
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

    def take_back(self, workers: list[Worker]) -> None:
        """For each idle worker, ask the busy worker holding the most unstarted tasks to
        give them back (:func:`cowmp.slots.request_yield`): it stops before its next
        task and returns the rest, which :meth:`give_back` queues again, split for the
        idle workers."""
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
            slots.request_yield(self.slot_array, w.slot, target)

    def unstarted(self, w: Worker) -> tuple[int, int | None]:
        """The tasks ``w`` holds but has not begun, if they are worth taking back (two
        or more, and expected to take long enough), and the piece from which to ask
        for them: ``(0, None)`` if none."""
        running = w.inflight[0]
        later = sum(len(piece.indices) for piece in itertools.islice(w.inflight, 1, None))
        slot = slots.read(self.slot_array, w.slot)
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

    def on_time(self, w: Worker) -> bool:
        """May pieces wait behind ``w``'s running one?  Only behind a short piece (a
        round trip would cost about as much as it), and not one running past twice its
        expected time: a piece queued behind a task far longer than its map's others
        could only be taken back once that task ends."""
        running = w.inflight[0]
        if not 0 < running.estimate <= PREFETCH_BEHIND_SECONDS:
            return False
        slot = slots.read(self.slot_array, w.slot)
        if slot is None or slot[0] != running.id:
            return True  # not begun
        return time.monotonic() - slot[2] <= 2 * running.estimate + 0.001

    def send(self, w: Worker, payloads: list[Message]) -> None:
        try:
            w.conn.send(payloads)
        except OSError:
            w.retiring = True  # it is dying: its pieces are recovered when it is gone

    def give(self, w: Worker, prefetch: bool) -> Message | None:
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
            if piece.payload is None and not self.encoder.encode(piece):
                self.queue.popleft()
                continue  # none of its tasks could be pickled
            if prefetch and not self.prefetch_room(w, piece):
                return None
            self.queue.popleft()
            w.add(piece)
            if self.max_private is not None:
                self.schedule_memory_check()
            return piece.payload
        return None

    def prefetch_low(self, w: Worker) -> bool:
        """Top a worker up only when half its prefetch is used: a write per few pieces."""
        count, size, seconds = w.prefetched()
        return (count <= PREFETCH_PIECES // 2 and size <= PREFETCH_BYTES // 2
                and seconds <= PREFETCH_SECONDS / 2)

    def prefetch_room(self, w: Worker, piece: Piece) -> bool:
        count, size, seconds = w.prefetched()
        return (count < PREFETCH_PIECES
                and size + piece.size <= PREFETCH_BYTES
                and seconds + piece.estimate <= PREFETCH_SECONDS)

    def fit_quota(self, piece: Piece, room: int) -> None:
        """A worker replaced after ``max_tasks_per_child`` tasks takes no more than that:
        the rest of a larger piece (the head of the queue) goes back behind it."""
        if len(piece.indices) <= room:
            return
        indices = list(piece.indices)
        self.queue.insert(1, Piece(piece.job, indices[room:], piece.track, piece.strikes))
        piece.indices = indices[:room]
        piece.payload = None

    def usable(self, w: Worker) -> bool:
        """May ``w`` be given work?  Once it is ready; or, without an initializer (its
        start is then only a fork), as soon as it exists: its connection holds the work
        until it reads it, and a worker that starts late is not left without any."""
        return w.ready or self.eager

    def can_take(self, w: Worker) -> bool:
        if (not self.usable(w) or w.conn is None or w.retiring or w.kill_reason
                or w.yielding is not None):
            return False
        return self.max_tasks is None or w.assigned < self.max_tasks

    def give_back(self, piece: Piece, rest: Any, split: bool) -> None:
        """A worker gave back the tasks at ``rest`` of ``piece`` unstarted: queue them
        first (``split``: the piece it was asked for, in a part per worker, at most)."""
        parts = min(len(rest), self.max_workers) if split else 1
        step = -(-len(rest) // parts)
        for start in range(0, len(rest), step):
            self.queue.insert(self.requeue_at, piece.again(rest[start:start + step]))
            self.requeue_at += 1
