"""The slot protocol: what a worker records in shared memory, and how the parent reads it
(docs/design.md §8).

Each worker owns a slot of :data:`SLOT_FIELDS` doubles in a shared ``RawArray("d")``
that the executor creates before any worker exists (so every worker, forked or spawned,
maps the same pages):

==========  ==========================================================  ===========
offset      field                                                       written by
==========  ==========================================================  ===========
``ID``      the id of the piece the worker holds                        the worker
``INDEX``   where it is in that piece (see below)                       the worker
``START``   ``time.monotonic()`` when the current task began            the worker
``YIELD``   the id of a piece the parent wants back (0: none)           the parent
==========  ==========================================================  ===========

``INDEX`` is a task's position (``>= 0``) while that task runs, :data:`UNTRACKED` while
a piece whose tasks are too short to record one by one runs, :data:`READING` while the
piece is being unpickled, and ``sending(count)`` once the piece's tasks have stopped
running (``count`` of them ran) and their outcomes are being sent.

Ordering.  Each field is an aligned 8-byte store, which the supported platforms perform
atomically (no torn double), but the three worker fields are not written as one unit.
The worker writes ``START``, then ``INDEX``, then ``ID`` last (:meth:`Writer.begin`);
the parent reads ``ID``, ``INDEX``, ``START``, then reads ``ID`` and ``INDEX`` again and
treats a changed pair as "being written": it reads again later (:func:`read`).  The
parent never acts on the slot alone where it matters: outcomes come in messages, and a
dead worker's slot is final (nothing writes it any more).  Only a replacement's start
clears a slot (:func:`clear`), before the worker exists.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import tempfile
import time
from typing import Any

__all__ = ["ID", "INDEX", "READING", "SLOT_FIELDS", "START", "UNTRACKED", "YIELD",
           "Writer", "attach", "clear", "file_backed", "read", "request_yield", "sending",
           "sent_count"]

#: fields per slot, and their offsets in it
SLOT_FIELDS = 4
ID, INDEX, START, YIELD = 0, 1, 2, 3

#: the index recorded for a piece whose tasks are not recorded one by one, and for a
#: piece that is being read (unpickled)
UNTRACKED, READING = -1, -2
#: indices from this one down: the piece's tasks have stopped running, its outcomes are
#: being sent (:func:`sending`)
_SENDING = -3


def sending(count: int) -> int:
    """The index recorded once ``count`` tasks of a piece ran and their outcomes are
    being sent."""
    return _SENDING - count


def sent_count(index: int) -> int | None:
    """For an index recorded by :func:`sending`, the tasks that ran; else None."""
    return _SENDING - index if index <= _SENDING else None


# -- the array ----------------------------------------------------------------------------

def file_backed(workers: int) -> tuple[Any, int]:
    """An array of slots for ``workers`` that a fresh process can map too (a fork server
    started as a new interpreter): ``(array, fd)``, the fd of the file behind it (to be
    passed to that process, which calls :func:`attach`; the caller closes it)."""
    size = workers * SLOT_FIELDS * 8
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cowmp-slots")
    else:  # pragma: no cover - macOS: an unlinked temporary file
        fd, path = tempfile.mkstemp(prefix="cowmp-slots-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return attach(fd, workers), fd


def attach(fd: int, workers: int) -> Any:
    """The array of slots in the file ``fd`` (shared, as are its pages after a fork)."""
    length = workers * SLOT_FIELDS
    memory = mmap.mmap(fd, length * 8)
    return (ctypes.c_double * length).from_buffer(memory)  # which keeps the mapping


# -- the parent's side ------------------------------------------------------------------

def read(slots: Any, slot: int) -> tuple[int, int, float] | None:
    """``(piece id, index, start time)`` of worker ``slot``, or None if the worker is
    writing it at this moment (read again later)."""
    base = slot * SLOT_FIELDS
    piece_id, index, started = slots[base + ID], slots[base + INDEX], slots[base + START]
    if slots[base + ID] != piece_id or slots[base + INDEX] != index:
        return None
    return int(piece_id), int(index), started


def request_yield(slots: Any, slot: int, piece_id: int) -> None:
    """Ask worker ``slot`` to give back piece ``piece_id`` and what it holds after it
    (0: ask nothing)."""
    slots[slot * SLOT_FIELDS + YIELD] = piece_id


def clear(slots: Any, slot: int) -> None:
    """A replacement starts with a clean slot: what the dead worker recorded there
    would name a piece that may be queued again, under the same id."""
    base = slot * SLOT_FIELDS
    slots[base:base + SLOT_FIELDS] = [0.0] * SLOT_FIELDS


# -- the worker's side ------------------------------------------------------------------

class Writer:
    """A worker's view of its own slot (``slots``: the array cast to doubles).  The
    run loops in :mod:`cowmp.worker` write ``INDEX`` and ``START`` through
    :attr:`index_at` and :attr:`start_at` directly: a method call per task would cost as
    much as a short task."""

    __slots__ = ("id_at", "index_at", "slots", "start_at", "yield_at")

    def __init__(self, slots: Any, slot: int) -> None:
        self.slots = slots
        self.id_at = slot * SLOT_FIELDS + ID
        self.index_at = self.id_at + INDEX
        self.start_at = self.id_at + START
        self.yield_at = self.id_at + YIELD

    def begin(self, piece_id: int) -> None:
        """A piece has arrived and is being read: ``START``, ``INDEX``, then ``ID``."""
        slots = self.slots
        slots[self.start_at] = time.monotonic()
        slots[self.index_at] = READING
        slots[self.id_at] = piece_id

    def wanted_back(self, piece_id: int) -> bool:
        """Does the parent want piece ``piece_id`` (and what follows it) back?"""
        return self.slots[self.yield_at] == piece_id

    def record(self, index: int) -> None:
        self.slots[self.index_at] = index
