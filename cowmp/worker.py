"""A pool worker: receives pieces of work, runs them, sends the outcomes back.

Messages on the worker's connection (pickled by :mod:`cowmp.serialize`):

* parent -> worker: a :data:`HEADER` ``(piece_id, number of tasks, flags)`` followed by
  the pickled function, then the pickle of ``(arguments, kwarg_dicts_or_None)``; EOF
  means stop.
* worker -> parent: ``("ready",)`` once the initializer succeeded, or
  ``("init_failed", exception)``; then for every piece
  ``("done", piece_id, values, errors, (seconds, tasks), retiring)``: a value per task
  (None where it raised), the exceptions by position, and the busy seconds of ``tasks`` of
  them (the first excepted, when they were recorded one by one), for map's chunk sizes.
  Messages go several per write when they are short (:mod:`cowmp.channel`).

Before each item the worker writes ``(piece_id, index, start time)`` into its slot of a
shared progress array: if it dies, the parent knows which task it was running (that task
alone fails) and since when (per-task timeouts), without a message per task.
"""

from __future__ import annotations

import itertools
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import exiting, serialize
from .channel import Channel

__all__ = ["HEADER", "SLOT_FIELDS", "STAR", "TIMED", "TRACKED", "UNTRACKED", "run_worker"]

#: piece id, number of tasks, flags, size of the pickled function that follows
HEADER = struct.Struct("!qIBI")
#: flags: tasks are argument tuples (else single arguments); tasks have a timeout; record
#: each task's index before it runs (else only the piece: its tasks are too short)
STAR, TIMED, TRACKED = 1, 2, 4
#: the index recorded for a piece whose tasks are not recorded one by one
UNTRACKED = -1

#: outcomes held back while more pieces wait to run: at most this many, this long
HOLD_PIECES = 16
HOLD_SECONDS = 0.0005

#: progress array fields per slot: piece id, index in the piece, start time (monotonic)
SLOT_FIELDS = 3


_prctl: Any = None


def prepare_parent_watch() -> None:
    """Load ``prctl`` once, in the fork server, so that each worker need not."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            _prctl = False


def _watch_parent(parent: int, forked: bool) -> None:
    """End this worker soon after its parent is gone.  A worker of the fork server asks
    the kernel (Linux); a spawned one polls, since the parent's thread that started it
    may end before the parent does (the kernel's signal follows that thread)."""
    if forked:
        prepare_parent_watch()
    if forked and _prctl:
        PR_SET_PDEATHSIG = 1
        if _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # died before prctl took effect
                os._exit(1)
            return

    def poll() -> None:  # elsewhere: a watchdog thread
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, name="cowmp-parent-watch", daemon=True).start()


class _BusyClock:
    """Seconds a piece kept its worker busy: wall-clock time less the time the worker
    waited for a CPU (Linux's schedstat run delay), so that a crowded machine does not
    make tasks look longer than they are and map's chunks too small.  Time a task spends
    blocked (I/O, sleep) counts as busy.  Wall-clock time where schedstat is missing."""

    def __init__(self) -> None:
        try:
            self.fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = None

    def now(self) -> tuple[float, int]:
        """A mark: (monotonic time, nanoseconds waited for a CPU so far; -1 unknown)."""
        wall = time.monotonic()
        if self.fd is not None:
            try:
                return wall, int(os.pread(self.fd, 64, 0).split()[1])
            except (OSError, ValueError, IndexError):
                self.fd = None
        return wall, -1

    def since(self, mark: tuple[float, int]) -> float:
        wall, waited = self.now()
        if waited < 0 or mark[1] < 0:
            return wall - mark[0]
        return max(0.0, wall - mark[0] - (waited - mark[1]) / 1e9)


class _Outbox:
    """Outcomes of finished pieces, sent together: while another piece has already
    arrived to run, they wait (at most :data:`HOLD_PIECES` pieces and
    :data:`HOLD_SECONDS`), so that the parent is woken once for several pieces.  Nothing
    waits when no piece is ready to run: the worker sends before it blocks."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.messages: list[bytes] = []
        self.since = 0.0

    def add(self, data: bytes, seconds: float = 0.0) -> None:
        """``data``: the outcomes of a piece that took ``seconds`` (a long one is sent
        at once: its outcomes would wait as long as the next piece runs)."""
        if not self.messages:
            self.since = time.monotonic()
        self.messages.append(data)
        if (seconds >= HOLD_SECONDS or not self.channel.pending()
                or len(self.messages) >= HOLD_PIECES
                or time.monotonic() - self.since >= HOLD_SECONDS):
            self.flush()

    def flush(self) -> None:
        if self.messages:
            messages, self.messages = self.messages, []
            self.channel.send(messages)


def _send(channel: Channel, message: tuple, snapshot: serialize.Snapshot) -> None:
    channel.send([serialize.dumps(message, snapshot, "message")])


def _outcomes(piece_id: int, values: list, errors: dict, measured: tuple[float, int],
              retiring: bool, snapshot: serialize.Snapshot) -> bytes:
    message = ("done", piece_id, values, errors, measured, retiring)
    try:
        data = serialize.dumps(message, snapshot)
    except serialize.TaskPicklingError:
        # find the results that cannot be pickled; each fails alone
        for index, value in enumerate(values):
            try:
                serialize.dumps(values[index], snapshot)
            except serialize.TaskPicklingError as error:
                values[index] = None
                errors[index] = serialize.wrap_exception(serialize.TaskPicklingError(
                    f"the task's result {serialize.short_repr(value)} cannot be sent "
                    f"back to the parent: {error}"))
        data = serialize.dumps(message, snapshot)
    return data


def _run_simple(fn: Any, arg_list: list, slots: Any, index_at: int,
                clock: _BusyClock) -> tuple[list, dict, tuple | None]:
    """``fn(arg)`` for each argument: the tight loop of ``map`` over one iterable.  Also
    returns the clock's mark at the end of the first task (None if there is one task)."""
    values: list = []
    errors: dict = {}
    append = values.append
    after_first = None
    start = 0
    while True:
        try:
            for index in range(start, len(arg_list)):
                if index == 1:
                    after_first = clock.now()
                slots[index_at] = index
                append(fn(arg_list[index]))
            return values, errors, after_first
        except BaseException as error:  # noqa: BLE001 - reported to the caller
            index = len(values)
            append(None)
            errors[index] = serialize.wrap_exception(error)
            start = index + 1


def _run_untracked(fn: Any, arg_list: list, star: int) -> tuple[list, dict]:
    """Tasks too short to record one by one: ``map`` runs them at C speed.  A task that
    raises is still known exactly: the results before it are in ``values``."""
    values: list = []
    errors: dict = {}
    tasks = itertools.starmap(fn, arg_list) if star else map(fn, arg_list)
    while True:
        try:
            values.extend(tasks)
            return values, errors
        except BaseException as error:  # noqa: BLE001 - reported to the caller
            errors[len(values)] = serialize.wrap_exception(error)
            values.append(None)


def _run_general(fn: Any, arg_list: list, kwarg_dicts: list | None, flags: int,
                 slots: Any, index_at: int, start_at: int,
                 clock: _BusyClock) -> tuple[list, dict, tuple | None]:
    """Any task, with keyword arguments, timed: as :func:`_run_simple`."""
    values: list = []
    errors: dict = {}
    after_first = None
    timed = flags & TIMED
    star = flags & STAR
    for index, args in enumerate(arg_list):
        if index == 1:
            after_first = clock.now()
        if timed:
            slots[start_at] = time.monotonic()
        slots[index_at] = index
        try:
            if not star:
                values.append(fn(args))
            elif kwarg_dicts is None:
                values.append(fn(*args))
            else:
                values.append(fn(*args, **kwarg_dicts[index]))
        except BaseException as error:  # noqa: BLE001 - reported to the caller
            values.append(None)
            errors[index] = serialize.wrap_exception(error)
    return values, errors, after_first


def run_worker(conn: Any, slot: int, progress: Any, parent: int | None,
               initializer: Callable[..., object] | None, initargs: tuple,
               max_tasks: int | None, *, forked: bool = True) -> None:
    """The worker's main loop; never returns (leaves through :func:`exiting.leave`)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
        if parent is not None:
            _watch_parent(parent, forked)
        # results go back by reference to what the parent had when the fork server was
        # made (shared objects, __main__'s classes); a spawned worker names __main__'s
        snapshot = serialize.Snapshot.take(by_reference=forked)
        channel = Channel(conn)
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as error:  # noqa: BLE001
                _send(channel, ("init_failed", serialize.wrap_exception(error)), snapshot)
                code = 1
                return
        _send(channel, ("ready",), snapshot)
        _serve(channel, memoryview(progress).cast("B").cast("d"), slot * SLOT_FIELDS,
               max_tasks, snapshot)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the executor closed our connection: it is done with us
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            conn.close()
        finally:
            exiting.leave(code)


def _serve(channel: Channel, slots: Any, id_at: int, max_tasks: int | None,
           snapshot: serialize.Snapshot) -> None:
    """Run pieces until the executor closes the connection or ``max_tasks`` are done."""
    index_at, start_at = id_at + 1, id_at + 2
    done = 0
    last_fn: Any = None
    last_fn_bytes: bytes | None = None
    clock = _BusyClock()
    outbox = _Outbox(channel)
    while True:
        try:
            data = channel.receive_one()
        except (EOFError, OSError):
            return  # the executor is done with us
        piece_id, count, flags, fn_size = HEADER.unpack_from(data)
        try:
            view = memoryview(data)
            fn_bytes = view[HEADER.size:HEADER.size + fn_size]
            if fn_bytes != last_fn_bytes:  # the same function as the last piece: reuse
                last_fn, last_fn_bytes = None, None
                last_fn = serialize.loads(fn_bytes)
                last_fn_bytes = bytes(fn_bytes)
            fn = last_fn
            arg_list, kwarg_dicts = serialize.loads(view[HEADER.size + fn_size:])
        except BaseException as error:  # noqa: BLE001
            # cannot even read the work: every task of the piece fails with the reason
            wrapped = serialize.wrap_exception(error)
            outbox.add(_outcomes(piece_id, [None] * count, dict.fromkeys(range(count), wrapped),
                                 (0.0, 0), False, snapshot))
            continue
        # the parent reads id, index, start: written start first, id last
        slots[start_at] = time.monotonic()
        slots[index_at] = 0 if flags & TRACKED else UNTRACKED
        slots[id_at] = piece_id
        started = clock.now()  # the run alone: the first unpickling costs more
        # tasks recorded one by one are also timed from the end of the first: a first
        # call in a new worker costs more, and a probe of a few tasks would overstate them
        after_first = None
        if not flags & TRACKED and kwarg_dicts is None:
            values, errors = _run_untracked(fn, arg_list, flags & STAR)
        elif flags & (TIMED | STAR):
            values, errors, after_first = _run_general(
                fn, arg_list, kwarg_dicts, flags, slots, index_at, start_at, clock)
        else:
            values, errors, after_first = _run_simple(fn, arg_list, slots, index_at, clock)
        slots[index_at] = len(arg_list)
        done += len(arg_list)
        retiring = max_tasks is not None and done >= max_tasks
        seconds = clock.since(started)
        measured = (seconds, len(arg_list)) if after_first is None else (
            clock.since(after_first), len(arg_list) - 1)
        outbox.add(_outcomes(piece_id, values, errors, measured, retiring, snapshot),
                   seconds)
        del fn, arg_list, kwarg_dicts, values, errors, view, fn_bytes
        if retiring:
            outbox.flush()
            return
