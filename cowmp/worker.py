"""A pool worker: receives pieces of work, runs them, sends the outcomes back.

Messages on the worker's connection (pickled by :mod:`cowmp.serialize`):

* parent -> worker: a :data:`HEADER` ``(piece_id, number of tasks)`` followed by the
  pickle of ``(fn, arg_tuples, kwarg_dicts_or_None)``; EOF means stop.
* worker -> parent: ``("ready",)`` once the initializer succeeded, or
  ``("init_failed", exception)``; then for every piece
  ``("done", piece_id, outcomes, seconds, retiring)`` where each outcome is
  ``(True, value)`` or ``(False, exception)``.

Before each item the worker writes ``(piece_id, index, start time)`` into its slot of a
shared progress array: if it dies, the parent knows which task it was running (that task
alone fails) and since when (per-task timeouts), without a message per task.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from . import exiting, serialize, sharing

__all__ = ["HEADER", "SLOT_FIELDS", "run_worker"]

HEADER = struct.Struct("!qI")

#: progress array fields per slot: piece id, index in the piece, start time (monotonic)
SLOT_FIELDS = 3


def _watch_parent(parent: int, pdeathsig: bool) -> None:
    """End this worker soon after its parent (the fork server) is gone."""
    try:
        if not pdeathsig:
            raise OSError("the parent's thread that started us may end before it")
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # died before prctl took effect
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def poll() -> None:  # elsewhere: a watchdog thread
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, name="cowmp-parent-watch", daemon=True).start()


def _send(conn: Any, message: tuple, snapshot: serialize.Snapshot) -> None:
    conn.send_bytes(serialize.dumps(message, snapshot, "message"))


def _send_outcomes(conn: Any, piece_id: int, outcomes: list, seconds: float,
                   retiring: bool, snapshot: serialize.Snapshot) -> None:
    try:
        data = serialize.dumps(("done", piece_id, outcomes, seconds, retiring), snapshot)
    except serialize.TaskPicklingError:
        # find the results that cannot be pickled; each fails alone
        for i, (ok, value) in enumerate(outcomes):
            try:
                serialize.dumps(value, snapshot)
            except serialize.TaskPicklingError as error:
                what = "result" if ok else "exception"
                outcomes[i] = (False, serialize.wrap_exception(serialize.TaskPicklingError(
                    f"the task's {what} {serialize.short_repr(value)} cannot be sent back "
                    f"to the parent: {error}"
                )))
        data = serialize.dumps(("done", piece_id, outcomes, seconds, retiring), snapshot)
    conn.send_bytes(data)


def run_worker(conn: Any, slot: int, progress: Any, parent: int | None,
               initializer: Callable[..., object] | None, initargs: tuple,
               max_tasks: int | None, *, pdeathsig: bool = True) -> None:
    """The worker's main loop; never returns (leaves through :func:`exiting.leave`)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
        if parent is not None:
            _watch_parent(parent, pdeathsig)
        snapshot = serialize.Snapshot(sharing.shared_objects(), {})
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException as error:  # noqa: BLE001
                _send(conn, ("init_failed", serialize.wrap_exception(error)), snapshot)
                code = 1
                return
        _send(conn, ("ready",), snapshot)
        base = slot * SLOT_FIELDS
        done = 0
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the executor is done with us
            started = time.monotonic()
            piece_id, count = HEADER.unpack_from(data)
            try:
                fn, arg_tuples, kwarg_dicts = serialize.loads(memoryview(data)[HEADER.size:])
            except BaseException as error:  # noqa: BLE001
                # cannot even read the work: every task of the piece fails with the reason
                failure = (False, serialize.wrap_exception(error))
                _send_outcomes(conn, piece_id, [failure] * count, 0.0, False, snapshot)
                continue
            outcomes = []
            # the parent reads id, index, start: written start first, id last
            progress[base + 2] = time.monotonic()
            progress[base + 1] = 0
            progress[base] = piece_id
            for index, args in enumerate(arg_tuples):
                if index:
                    progress[base + 2] = time.monotonic()
                    progress[base + 1] = index
                try:
                    if kwarg_dicts is None:
                        outcomes.append((True, fn(*args)))
                    else:
                        outcomes.append((True, fn(*args, **kwarg_dicts[index])))
                except BaseException as error:  # noqa: BLE001 - reported to the caller
                    outcomes.append((False, serialize.wrap_exception(error)))
            progress[base + 1] = len(arg_tuples)
            done += len(arg_tuples)
            retiring = max_tasks is not None and done >= max_tasks
            _send_outcomes(conn, piece_id, outcomes, time.monotonic() - started,
                           retiring, snapshot)
            del fn, arg_tuples, kwarg_dicts, outcomes
            if retiring:
                return
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
