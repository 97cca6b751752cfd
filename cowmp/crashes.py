"""Crash attribution: when a worker dies, which of its tasks fail and which run again
(docs/design.md §9).

:func:`attribute` is a pure function of what the parent knows: the pieces the worker
held, in the order it was sent them, what its slot says (:mod:`cowmp.slots`), and
whether it had started.  It returns the tasks that fail and the pieces to queue again;
:func:`death_error` turns a failure into the exception its future gets.

The bound: a task recorded as running when its worker died fails alone.  A task whose
run cannot be told apart from its neighbours' (its piece was being read, its outcomes
were being sent, or its tasks ran unrecorded because they are too short) runs again,
alone or recorded, with one strike more, so that a second death names it; at
:data:`MAX_STRIKES` it fails instead.  So a task runs at most twice unless its earlier
runs provably finished (outcomes lost with the worker: they run again as they are).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from concurrent.futures import TimeoutError as futures_TimeoutError
from concurrent.futures.process import BrokenProcessPool
from typing import NamedTuple

from . import slots
from .jobs import Piece

__all__ = ["MAX_STRIKES", "Failure", "TaskTimeoutError", "WorkerDiedError", "attribute",
           "death_error", "describe_exit"]

#: worker deaths a task may be in flight at (its run unfinished, or finished with its
#: outcome lost) before it fails with WorkerDiedError instead of running once more
MAX_STRIKES = 2


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


class Failure(NamedTuple):
    """Task ``index`` (of ``piece.job``) fails.  ``phase`` None: it was running when its
    worker died; else it struck out in that phase (``"reading"``, ``"running"``,
    ``"sending the results of"``), for the second time."""

    piece: Piece
    index: int
    phase: str | None


def attribute(inflight: Iterable[Piece], slot: tuple[int, int, float] | None,
              ready: bool, killed_for: tuple | None = None
              ) -> tuple[list[Failure], list[Piece]]:
    """What a dead worker held, settled: ``(failures, pieces to queue again, in order)``.

    ``inflight``: its pieces in the order they were sent; ``slot``: what its slot says
    (None: unreadable); ``ready``: whether it had told that it started; ``killed_for``:
    ``(piece id, position, ...)`` of the task whose timeout made the parent kill it.

    * a task it ran, recorded one by one, fails: it is the cause, or it was killed;
      but if the parent killed it for another task's timeout (that task ended while the
      kill was on its way), the task it ran did not cause its death: that piece runs
      again, with no strike;
    * a piece it was reading, or whose outcomes it was sending, or whose tasks it ran
      unrecorded: the cause is one of its tasks, unknown; each gets a strike (see
      :func:`strike`);
    * pieces it finished (outcomes lost) or had not begun run again as they are.
    """
    pieces = list(inflight)
    running = next((position for position, piece in enumerate(pieces)
                    if slot is not None and slot[0] == piece.id), None)
    failures: list[Failure] = []
    requeue: list[Piece] = []
    for position, piece in enumerate(pieces):
        if running is None:
            # no piece begun: the first was being received, unless it died at once
            if position == 0 and ready:
                requeue += strike(piece, piece.indices, "reading", True, failures)
            else:
                requeue.append(piece)
            continue
        if position != running:
            requeue.append(piece)  # finished (outcomes lost) or not begun
            continue
        assert slot is not None
        index = slot[1]
        indices = list(piece.indices)
        if index == slots.READING:
            requeue += strike(piece, indices, "reading", True, failures)
        elif (ran := slots.sent_count(index)) is not None:
            # the tasks that ran, outcomes lost; those it gave back never began
            if ran:
                requeue += strike(piece, indices[:ran], "sending the results of",
                                  piece.tracked, failures)
            if indices[ran:]:
                requeue.append(piece.again(indices[ran:]))
        elif index == slots.UNTRACKED or not piece.tracked:
            requeue += strike(piece, indices, "running", False, failures)
        elif killed_for is not None and tuple(killed_for[:2]) != (piece.id, index):
            requeue.append(piece.again())  # killed late, for a task that had ended
        else:
            failures.append(Failure(piece, indices[index], None))
            requeue += [piece.again(part) for part in (indices[:index], indices[index + 1:])
                        if part]
    return failures, requeue


def strike(piece: Piece, indices: list, phase: str, alone: bool,
           failures: list[Failure]) -> list[Piece]:
    """The tasks of ``piece`` at ``indices`` may have killed their worker: one strike
    more.  At :data:`MAX_STRIKES` they are added to ``failures``; else they run again
    (``alone``: each in a piece of its own; else together), recorded one by one.
    Returns the pieces to run again."""
    strikes = piece.strikes + 1
    if strikes >= MAX_STRIKES:
        failures.extend(Failure(piece, index, phase) for index in indices)
        return []
    if alone:
        return [Piece(piece.job, [index], True, strikes) for index in indices]
    return [Piece(piece.job, indices, True, strikes)]


def death_error(failure: Failure, pid: int | None, exitcode: int | None,
                kill_reason: tuple | None, describe: Callable[[Piece, int], str]
                ) -> BaseException:
    """The exception a failed task's future gets.  ``kill_reason``: ``(piece id, position,
    timeout)`` if the parent killed the worker for a task's timeout; ``describe``: the
    task's name for the message."""
    piece, index, phase = failure
    task = describe(piece, index)
    if phase is not None:
        return WorkerDiedError(
            f"the worker (pid {pid}) {phase} task {task} died {describe_exit(exitcode)}, "
            f"and so did a worker before it with this task in flight; it is not run again",
            pid, exitcode)
    if kill_reason is not None and kill_reason[:2] == (piece.id,
                                                       list(piece.indices).index(index)):
        return TaskTimeoutError(
            f"task {task} ran past its timeout of {kill_reason[2]:g} s; its worker "
            f"(pid {pid}) was stopped and replaced")
    return WorkerDiedError(
        f"the worker (pid {pid}) running task {task} died {describe_exit(exitcode)}; the "
        "executor replaced it", pid, exitcode)
