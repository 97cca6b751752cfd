"""A pool worker: receives pieces of work, runs them, sends the outcomes back.

Messages on the worker's connection:

* parent -> worker: a :data:`HEADER` ``(piece_id, number of tasks, flags, size of the
  function, size of the keyword arguments)``, then the pickled function, the pickled
  keyword-argument dicts (``submit`` only) and the tasks' arguments
  (:func:`cowmp.serialize.pack_list`: one argument that cannot be unpickled fails its
  task alone); EOF means stop.
* worker -> parent: :data:`READY` once the initializer succeeded, or :data:`INIT_FAILED`
  and the encoded exception; then for every piece :data:`DONE` ``(piece_id, tasks, busy
  seconds, tasks timed, retiring, size of the values)``, the values
  (:func:`~cowmp.serialize.pack_list`: a value per task, None where it raised) and the
  exceptions by position (:func:`~cowmp.serialize.encode_errors`).  The busy seconds are
  those of the tasks timed (the first excepted, when they were recorded one by one), for
  map's chunk sizes.  The header is outside any pickle, so that the parent knows the
  piece even when nothing else of the message can be unpickled.  Messages go several
  per write when they are short (:mod:`cowmp.channel`).

Before each task (or piece, for tasks too short to record one by one) the worker
records where it is in its slot of a shared array (:mod:`cowmp.slots`, which holds the
protocol, the writer's side and the reader's side together): if it dies, the parent
knows which task it was running (that task alone fails), whether it died sending the
outcomes, and since when a task runs (per-task timeouts), without a message per task.
The slot's last field is the parent's: a piece it wants back.  The worker looks at it
before it starts a piece and, for tasks recorded one by one, before each task.  When it
names the piece at hand, the worker stops there: its DONE message carries the outcomes
of the tasks that ran (perhaps none), and every piece that has already arrived behind it
comes back with a DONE of no task (:func:`_give_back`).  The parent sends nothing more
to a worker it asked to yield until that piece's DONE arrives, so what has arrived is
everything it sent; it then runs the unstarted tasks elsewhere.  Nothing runs twice: the
parent acts on what the worker reports, not on what it read in the slot.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import process as mp_process
from typing import Any

from . import exiting, handles, serialize, sharing, slots
from .channel import Channel

__all__ = ["DONE", "DONE_KIND", "HEADER", "HOLD_SECONDS", "INIT_FAILED", "READY", "SHORT",
           "STAR", "TIMED", "TRACKED", "prepare_parent_watch", "run_worker"]

#: piece id, number of tasks, flags, sizes of the pickled function and keyword arguments
HEADER = struct.Struct("!qIBII")
#: the outcomes of a piece: kind, piece id, tasks, busy seconds, tasks timed, retiring,
#: size of the values (the exceptions follow them)
DONE = struct.Struct("!cqIdIBQ")
#: the kinds of message a worker sends (DONE's first byte, or a message of its own)
READY, INIT_FAILED, DONE_KIND = b"R", b"I", b"D"
#: flags: tasks are argument tuples (else single arguments); tasks have a timeout; record
#: each task's index before it runs (else only the piece: its tasks are too short); the
#: parent expects the piece to take less than HOLD_SECONDS (outcomes held back may wait
#: for it, and for no other piece)
STAR, TIMED, TRACKED, SHORT = 1, 2, 4, 8
#: outcomes held back while more pieces wait to run: at most this many, this long
HOLD_PIECES = 16
HOLD_SECONDS = 0.0005

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
                exiting.leave(1, flush=False)
            return

    def poll() -> None:  # elsewhere: a watchdog thread
        while os.getppid() == parent:
            time.sleep(0.5)
        exiting.leave(1, flush=False)

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
    waits when no piece is ready to run (the worker sends before it blocks), nor while a
    piece that is not known to be :data:`SHORT` runs (it is sent before that piece
    begins): outcomes held back never wait long, and never delay the end of a map."""

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


def _outcomes(piece_id: int, values: list, errors: dict, measured: tuple[float, int],
              retiring: bool, snapshot: serialize.Snapshot) -> bytes:
    """The DONE message of a piece.  A result that cannot be pickled fails its task alone:
    with :class:`~cowmp.serialize.TaskPicklingError`, or with the exception its pickling
    raised if that is no ``Exception`` (``SystemExit``, as the standard executor)."""
    data, failed = serialize.pack_list(values, snapshot)
    for index, error in failed.items():
        if isinstance(error, Exception):
            problem = serialize.TaskPicklingError(
                f"the task's result {serialize.short_repr(values[index])} cannot be sent "
                f"back to the parent: {serialize.describe(error)}")
            problem.__cause__ = error
            error = problem
        errors[index] = serialize.wrap_exception(error)
    header = DONE.pack(DONE_KIND, piece_id, len(values), measured[0], measured[1], retiring,
                       len(data))
    return b"".join((header, data, serialize.encode_errors(errors, snapshot)))


class _BadArgument:
    """Stands for an argument that could not be unpickled; :func:`_guarded` raises its
    error when the task is run, so that the task fails in its turn, alone."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _guarded(fn: Any) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        if args and type(args[0]) is _BadArgument:
            raise args[0].error
        return fn(*args, **kwargs)

    return call


def _unpickling_error(what: str, error: BaseException) -> serialize.TaskUnpicklingError:
    problem = serialize.TaskUnpicklingError(
        f"cannot unpickle {what} in the worker: {serialize.describe(error)}")
    problem.__cause__ = error
    return problem


def _run_simple(fn: Any, arg_list: list, slot: slots.Writer, clock: _BusyClock,
                piece_id: int) -> tuple[list, dict, tuple | None]:
    """``fn(arg)`` for each argument: the tight loop of ``map`` over one iterable.  Also
    returns the clock's mark at the end of the first task (None if there is one task).
    Stops before a task if the parent wants the rest of the piece back (fewer values)."""
    values: list = []
    errors: dict = {}
    append = values.append
    after_first = None
    start = 0
    array, index_at, yield_at = slot.slots, slot.index_at, slot.yield_at
    while True:
        try:
            for index in range(start, len(arg_list)):
                if index:
                    if array[yield_at] == piece_id:
                        return values, errors, after_first
                    if index == 1:
                        after_first = clock.now()
                array[index_at] = index
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
                 slot: slots.Writer, clock: _BusyClock,
                 piece_id: int) -> tuple[list, dict, tuple | None]:
    """Any task, with keyword arguments, timed: as :func:`_run_simple`."""
    values: list = []
    errors: dict = {}
    after_first = None
    timed = flags & TIMED
    star = flags & STAR
    array, index_at, start_at, yield_at = slot.slots, slot.index_at, slot.start_at, slot.yield_at
    for index, args in enumerate(arg_list):
        if index:
            if array[yield_at] == piece_id:  # slot.wanted_back, inlined
                break
            if index == 1:
                after_first = clock.now()
        if timed:
            array[start_at] = time.monotonic()
        array[index_at] = index
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


def _become_worker(name: str, parent: int | None, method: str | None) -> None:
    """What multiprocessing tells a process about itself, as in one of its own children:
    ``current_process()`` is this worker (``CowPoolWorker-N``), ``parent_process()`` the
    executor's process, and the start method the executor's context's."""
    me = mp_process.BaseProcess(name=name, daemon=True)
    if parent is not None:
        me._parent_pid = parent  # type: ignore[attr-defined]
        me._parent_name = "MainProcess"  # type: ignore[attr-defined]
        mp_process._parent_process = _ExecutorProcess(  # type: ignore[attr-defined]
            "MainProcess", parent, None)
    mp_process._current_process = me  # type: ignore[attr-defined]
    if method is not None:
        import multiprocessing

        multiprocessing.set_start_method(method, force=True)


class _ExecutorProcess(mp_process._ParentProcess):  # type: ignore[name-defined,misc]
    """The executor's process, seen from a worker of its fork server (which is not its
    child, so no sentinel: is_alive and join poll)."""

    def is_alive(self) -> bool:
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)


def run_worker(conn: Any, slot: int, slot_array: Any, parent: int | None,
               initializer: Callable[..., object] | None, initargs: tuple,
               max_tasks: int | None, *, forked: bool = True, name: str | None = None,
               owner: int | None = None, method: str | None = None,
               by_reference: bool | None = None, loader: tuple | None = None) -> None:
    """The worker's main loop; never returns (leaves through :func:`exiting.leave`).
    ``parent``: the process whose end ends the worker.  ``name``, ``owner`` and
    ``method``: the worker's process name, the executor's process and start method, for
    a worker that the fork server forked (a context's process knows them already).
    ``by_reference`` (default: ``forked``): the worker is a copy of the executor's
    process, and sends shared objects and ``__main__``'s definitions by reference.
    ``loader``: ``(callable, args)`` to run first, where no fork server loaded the data
    for every worker (:func:`cowmp.sharing.load`)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
        if name is not None:
            _become_worker(name, owner, method)
        if parent is not None:
            _watch_parent(parent, forked)
        # results go back by reference to what the parent had when the fork server was
        # made (shared objects, __main__'s classes); a spawned worker names __main__'s
        snapshot = serialize.Snapshot.take(
            by_reference=forked if by_reference is None else by_reference)
        handles.opened(conn)  # closed in processes that tasks fork
        channel = Channel(conn)
        if initializer is not None or loader is not None:
            try:
                if loader is not None:
                    sharing.load(*loader)
                if initializer is not None:
                    initializer(*initargs)
            except BaseException as error:  # noqa: BLE001
                # as the standard executor's workers do
                logging.getLogger("concurrent.futures").critical(
                    "Exception in initializer:", exc_info=True)
                channel.send([INIT_FAILED + serialize.encode_errors(
                    {0: serialize.wrap_exception(error)}, snapshot)])
                code = 1
                return
        channel.send([READY])
        _serve(channel, slots.Writer(memoryview(slot_array).cast("B").cast("d"), slot),
               max_tasks, snapshot)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the executor closed our connection: it is done with us
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            handles.close(conn)
        finally:
            exiting.leave(code)


class _Reader:
    """Reads a piece's function (the last one is kept: the next piece usually has the
    same), keyword arguments and arguments.  What cannot be unpickled fails the tasks it
    belongs to, not the worker."""

    def __init__(self) -> None:
        self.fn_bytes: bytes | None = None
        self.fn: Any = None

    def read(self, data: bytes, count: int, fn_size: int, kw_size: int,
             star: bool) -> tuple[Any, list, list | None, bool]:
        """``(fn, arguments, keyword-argument dicts, star)``; an argument that could not
        be unpickled is replaced by a :class:`_BadArgument` that the returned function
        raises (its tasks then take argument tuples: ``star``)."""
        view = memoryview(data)
        start = HEADER.size
        fn_bytes = view[start:start + fn_size]
        kw_bytes = view[start + fn_size:start + fn_size + kw_size]
        try:
            if fn_bytes != self.fn_bytes:
                self.fn, self.fn_bytes = None, None
                self.fn = serialize.loads(fn_bytes)
                self.fn_bytes = bytes(fn_bytes)
        except BaseException as error:  # noqa: BLE001 - SystemExit from a reduce too
            bad = _BadArgument(_unpickling_error("the function", error))
            return _guarded(None), [(bad,)] * count, None, True
        fn = self.fn
        try:
            kwarg_dicts = serialize.loads(kw_bytes) if kw_size else None
            arg_list, failed = serialize.unpack_list(view[start + fn_size + kw_size:])
        except BaseException as error:  # noqa: BLE001
            bad = _BadArgument(_unpickling_error("the arguments", error))
            return _guarded(fn), [(bad,)] * count, None, True
        if failed:
            fn = _guarded(fn)
            if not star:
                arg_list = [(arg,) for arg in arg_list]
            for index, error in failed.items():
                bad = _BadArgument(_unpickling_error(f"the arguments of task {index}", error))
                arg_list[index] = (bad,)
        return fn, arg_list, kwarg_dicts, star or bool(failed)


def _serve(channel: Channel, slot: slots.Writer, max_tasks: int | None,
           snapshot: serialize.Snapshot) -> None:
    """Run pieces until the executor closes the connection or ``max_tasks`` are done."""
    done = 0
    reader = _Reader()
    clock = _BusyClock()
    outbox = _Outbox(channel)
    while True:
        try:
            data = channel.receive_one()
        except (EOFError, OSError):
            return  # the executor is done with us
        piece_id, count, flags, fn_size, kw_size = HEADER.unpack_from(data)
        slot.begin(piece_id)
        if slot.wanted_back(piece_id):  # before it began
            slot.record(slots.sending(0))
            _give_back(channel, outbox, piece_id, snapshot)
            continue
        if not flags & SHORT:
            outbox.flush()
        fn, arg_list, kwarg_dicts, star = reader.read(data, count, fn_size, kw_size,
                                                      bool(flags & STAR))
        if star:
            flags |= STAR
        del data
        slot.record(0 if flags & TRACKED else slots.UNTRACKED)
        started = clock.now()  # the run alone: the first unpickling costs more
        # tasks recorded one by one are also timed from the end of the first: a first
        # call in a new worker costs more, and would overstate the piece's tasks
        after_first = None
        if not flags & TRACKED and kwarg_dicts is None:
            values, errors = _run_untracked(fn, arg_list, flags & STAR)
        elif flags & (TIMED | STAR):
            values, errors, after_first = _run_general(
                fn, arg_list, kwarg_dicts, flags, slot, clock, piece_id)
        else:
            values, errors, after_first = _run_simple(fn, arg_list, slot, clock, piece_id)
        ran = len(values)
        slot.record(slots.sending(ran))  # now their outcomes are sent
        done += ran
        retiring = max_tasks is not None and done >= max_tasks
        seconds = clock.since(started)
        measured = (seconds, ran) if after_first is None else (
            clock.since(after_first), ran - 1)
        outbox.add(_outcomes(piece_id, values, errors, measured, retiring, snapshot),
                   seconds)
        yielded = ran < len(arg_list)
        del fn, arg_list, kwarg_dicts, values, errors
        if yielded:
            _give_back(channel, outbox, None, snapshot)
        if retiring:
            outbox.flush()
            return


def _give_back(channel: Channel, outbox: _Outbox, piece_id: int | None,
               snapshot: serialize.Snapshot) -> None:
    """The parent wants its work back: piece ``piece_id`` (None: that piece's outcomes
    are in the outbox already) and every piece that has arrived after it, none of them
    run (a DONE of no task each), sent at once."""
    returned = [] if piece_id is None else [piece_id]
    returned += [HEADER.unpack_from(data)[0] for data in channel.drain()]
    for number in returned:
        outbox.messages.append(_outcomes(number, [], {}, (0.0, 0), False, snapshot))
    outbox.flush()
