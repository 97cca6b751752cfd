"""The pool behind :class:`~cowmp.executor.CowProcessPoolExecutor`: its state, its life
cycle and its manager thread (docs/design.md §7).

The manager thread runs :meth:`Pool.loop`: handle the launcher's events, dispatch queued
pieces (:mod:`cowmp.dispatch`), wait for a worker's message, a launcher event or a
wake-up, settle what came (outcomes, a worker's end: :mod:`cowmp.crashes`), enforce the
limits (:mod:`cowmp.limits`), again, until it is shut down with nothing left in flight.
Other threads only queue work and wake it (:meth:`Pool.enqueue`, :meth:`Pool.shutdown`).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import weakref
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import sharedctypes
from typing import Any

from . import crashes, forking, handles, serialize, slots, worker
from .channel import Channel, Waiter
from .context import is_forking_cowfork
from .crashes import describe_exit
from .dispatch import Dispatch, Worker
from .fork_server import ForkServer
from .jobs import Encoder, Piece
from .launchers import KILL_NOW, LEAVE, TERMINATE, Launcher
from .limits import Limits
from .mapping import MapRun
from .spawn_launcher import SpawnLauncher

__all__ = ["Pool", "forget_parent_pools", "shut_down_at_exit"]

LOGGER = logging.getLogger("concurrent.futures")

#: workers that die before they are ready, in a row, before the pool is declared broken
STARTUP_FAILURES = 3
#: seconds ``worker_pids`` waits at most for workers being started to be known
PID_WAIT = 5.0
#: seconds ``shutdown(cancel_futures=True)`` waits at most for the manager thread to give
#: idle workers what was submitted before it
HAND_OUT_WAIT = 1.0


class _Ended:
    """Stands for a manager thread that has ended (joined at once)."""

    def join(self, timeout: float | None = None) -> None:
        return None


_ENDED: Any = _Ended()
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_pid = [os.getpid()]  # this process's id, kept current across forks (no system call)
_global_shutdown = False


def forget_parent_pools() -> None:
    """In a forked child the parent's executors are not ours: their handles were closed
    by the fork (:mod:`cowmp.handles`), and they are forgotten.  (An at-fork hook,
    registered by :mod:`cowmp.stdlib_patches`.)"""
    _pid[0] = os.getpid()
    for pool in list(_live_pools):
        if pool.launcher is not None:
            pool.launcher.disown()
    _live_pools.clear()


def shut_down_at_exit() -> None:
    """At interpreter exit, as the standard executor does: finish pending work, stop.
    (Registered by :mod:`cowmp.stdlib_patches` where the standard executor registers
    its own: before non-daemon threads are joined.)"""
    global _global_shutdown
    _global_shutdown = True
    for pool in list(_live_pools):
        if pool.owner == os.getpid():
            pool.shutdown(wait=True, cancel_futures=False)


class Pool(Dispatch, Limits):
    """The executor's state and its manager thread (kept apart from the facade, so that
    a forgotten executor can be collected and shut down).  Who gets which piece is
    :class:`~cowmp.dispatch.Dispatch`'s; timeouts and memory recycling are
    :class:`~cowmp.limits.Limits`'."""

    def __init__(self, max_workers: int, ctx: Any, initializer: Any, initargs: tuple,
                 max_tasks: int | None, task_timeout: float | None,
                 max_private: int | None = None, loader: tuple | None = None) -> None:
        self.owner = os.getpid()
        self.eager = initializer is None and loader is None
        self.max_workers = max_workers
        self.max_tasks = max_tasks
        self.max_private = max_private
        self.memory_check_at: float | None = None  # next reading of workers' USS
        self.recycled = 0  # workers replaced for their private memory
        self.task_timeout = task_timeout
        self.queue: collections.deque[Piece] = collections.deque()
        self.lock = threading.Lock()
        # held by the manager thread while it works: a fork that cowmp makes waits until
        # the thread waits, holding nothing (forking.quiesced)
        self.active = threading.RLock()
        self.shutdown_requested = False
        self.terminating: int | None = None  # the signal that ends the workers now
        self.broken: str | None = None
        self.thread: Any = None  # the manager thread, _ENDED once it has ended
        self.workers: dict[int, Worker] = {}
        self.startup_failures = 0
        self.waiting = False  # the manager is (about to be) blocked waiting
        self.requeue_at = 0  # where the next piece given back is queued
        self.pids_changed = threading.Condition()  # a worker's pid became known
        # set by the manager once it has handed out what it can (shutdown waits for it)
        self.dispatched: threading.Event | None = None
        # maps that may still read input (shutdown reads the rest of it)
        self.maps: weakref.WeakSet[MapRun] = weakref.WeakSet()
        # measured (seconds, tasks), decayed, by pickled function, for map's chunk sizes
        self.task_seconds: dict[bytes, tuple[tuple[float, float], int]] = {}
        self.waiter = Waiter()
        self.wake_r = self.wake_w = None
        self.launcher: Launcher | None = None
        try:
            self.wake_r, self.wake_w = socket.socketpair()
            handles.opened(self.wake_r, self.wake_w)
            self.wake_r.setblocking(False)
            self.wake_w.setblocking(False)
            forks = is_forking_cowfork(ctx) or (
                getattr(ctx, "_name", None) == "fork" and hasattr(os, "fork"))
            size = max_workers * slots.SLOT_FIELDS
            if forks:
                slot_fd = None
                if loader is None:  # the server is a copy of this process: by reference
                    self.slot_array = sharedctypes.RawArray("d", size)
                else:  # a new interpreter loads, then forks: it maps a file
                    self.slot_array, slot_fd = slots.file_backed(max_workers)
                self.encoder = Encoder(serialize.Snapshot.take(by_reference=loader is None))
                self.launcher = ForkServer(self.slot_array, initializer, initargs,
                                           max_tasks, getattr(ctx, "_name", None),
                                           max_workers, loader=loader, slot_fd=slot_fd)
            else:
                self.slot_array = ctx.RawArray("d", size)
                self.encoder = Encoder(serialize.Snapshot.take(by_reference=False))
                self.launcher = SpawnLauncher(ctx, self.slot_array, initializer, initargs,
                                              max_tasks, loader)
            _live_pools.add(self)
            for slot in range(max_workers):
                self.spawn(slot)
            self.handle_pending_events()  # the first workers' pids, known already
            self.start_thread()
        except BaseException:
            if self.launcher is not None:
                self.launcher.stop(KILL_NOW)
            self.close_handles()
            raise

    # -- called from any thread ---------------------------------------------------------

    def check_usable(self) -> None:
        if self.owner != _pid[0]:
            raise RuntimeError(
                f"this executor belongs to process {self.owner}; a forked child must "
                "create its own"
            )
        if self.broken:
            raise BrokenProcessPool(self.broken)
        if self.shutdown_requested:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _global_shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def remember_task_seconds(self, fn_payload: bytes,
                              measured: tuple[tuple[float, float], int]) -> None:
        if len(self.task_seconds) >= 64 and fn_payload not in self.task_seconds:
            self.task_seconds.pop(next(iter(self.task_seconds)))  # the oldest
        self.task_seconds[fn_payload] = measured

    def enqueue(self, pieces: list[Piece], check: bool = True) -> None:
        """Queue work (``check``: refuse it once shut down, as ``submit`` does; work of a
        map that began before the shutdown is still taken)."""
        with self.lock:
            if check:
                self.check_usable()
            elif self.broken:
                raise BrokenProcessPool(self.broken)
            self.queue.extend(pieces)
        if self.waiting:  # else the manager sees the queue before it waits again
            self.wake()

    def start_thread(self) -> None:
        """Start the manager thread (with the workers: it hears of their start)."""
        self.thread = threading.Thread(target=self.run, name="cowmp-executor", daemon=True)
        self.thread.start()

    def worker_pids(self) -> list[int]:
        """The workers' process ids; those still being started are waited for (at most
        PID_WAIT seconds, and not in the manager thread, which hears of them)."""
        deadline = time.monotonic() + PID_WAIT
        with self.pids_changed:
            while True:
                workers = list(self.workers.values())
                if all(w.pid is not None for w in workers) or self.broken or (
                        threading.current_thread() is self.thread
                        or not isinstance(self.thread, threading.Thread)):
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    break
                self.pids_changed.wait(min(left, 0.1))
        return [w.pid for w in workers if w.pid is not None]

    def enqueue_here(self, pieces: list[Piece]) -> None:
        """``enqueue`` from the manager thread itself (no wake-up, no usability check:
        work of a map already running; a broken pool fails it)."""
        with self.lock:
            if not self.broken:
                self.queue.extend(pieces)
                return
        error = BrokenProcessPool(self.broken)
        for piece in pieces:
            piece.job.fail_all(piece.indices, error)

    def wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except (BlockingIOError, OSError):
            pass  # already awake, or closed

    def shutdown(self, wait: bool, cancel_futures: bool, terminate: int | None = None) -> None:
        """No new work.  ``cancel_futures``: cancel what has not started.  ``terminate``
        (a signal): also end the workers now, failing the tasks they run.  Otherwise maps
        begun before read the rest of their input now (as the standard executor's map,
        which reads it all when called), so that their results can be consumed later."""
        if self.owner != _pid[0]:
            return  # an executor inherited through a fork: not this process's
        if not (cancel_futures or terminate):
            for run in list(self.maps):
                run.read_all()
        elif not terminate:
            self.hand_out()
        cancelling = bool(cancel_futures or terminate)
        with self.lock:
            self.shutdown_requested = True
            if terminate:
                self.terminating = terminate
            queued = list(self.queue) if cancelling else []
            thread = self.thread
        if cancelling:
            for run in list(self.maps):
                run.stop_reading(CancelledError())
            # outside the lock: cancelling runs the futures' callbacks, user code that
            # may wait for a thread that is submitting to this executor (in enqueue)
            for piece in queued:
                piece.job.cancel()  # a job partly sent already (a requeued rest) runs on
            with self.lock:
                kept = [piece for piece in self.queue if not piece.job.future.cancelled()]
                self.queue.clear()
                self.queue.extend(kept)
        self.wake()
        if wait and thread is not threading.current_thread():
            thread.join()

    def hand_out(self) -> None:
        """Let the manager thread give idle workers what is queued (cancel_futures
        cancels only what is still queued after that: as the standard executor, whose
        manager has moved work to its call queue by then, a task submitted while a
        worker was idle has begun)."""
        thread = self.thread
        if not isinstance(thread, threading.Thread) or thread is threading.current_thread():
            return
        with self.lock:  # a shutdown in another thread may have asked already
            dispatched = self.dispatched = self.dispatched or threading.Event()
        self.wake()
        dispatched.wait(HAND_OUT_WAIT)

    def close_handles(self) -> None:
        """Close what the pool opened in this process (after its launcher has stopped)."""
        handles.close(self.wake_r, self.wake_w)
        self.waiter.close()
        _live_pools.discard(self)

    # -- the manager thread -------------------------------------------------------------

    def run(self) -> None:
        with forking.own_thread(self.active):
            try:
                self.loop()
            except BaseException as error:  # noqa: BLE001 - a bug: every future must end
                LOGGER.critical("the executor's manager thread failed", exc_info=True)
                self.break_pool(f"the executor's manager thread failed: {error!r}",
                                cause=error)
            finally:
                # what is left only closes handles (under the registry's lock) and waits:
                # a fork may happen meanwhile
                self.active.release()
                try:
                    self.stop_workers()
                finally:
                    self.active.acquire()
                    self.thread = _ENDED  # the pool no longer holds the thread

    def loop(self) -> None:
        while True:
            self.handle_pending_events()  # before dispatch: replacements' pids too
            if self.terminating:
                self.terminate_workers()
            self.dispatch()
            dispatched, self.dispatched = self.dispatched, None
            if dispatched is not None:
                dispatched.set()
            if self.finished():
                return
            launcher_waitables = self.launcher.waitables()
            by_conn = {w.conn.conn: w for w in self.workers.values() if w.conn}
            waitables = [self.wake_r, *launcher_waitables, *by_conn]
            queued = len(self.queue)
            self.waiting = True  # from now on, enqueue() wakes us
            if len(self.queue) != queued or self.terminating:  # no wait: work came in
                self.waiting = False
                continue
            timeout = self.next_wakeup()
            self.active.release()  # a fork may happen while this thread waits
            try:
                ready = self.waiter.wait(waitables, timeout)
            finally:
                self.active.acquire()
            self.waiting = False
            for obj in ready:
                if obj is self.wake_r:
                    self.drain_wakeups()
                elif obj in by_conn:
                    self.worker_message(by_conn[obj])
                elif obj in launcher_waitables:
                    self.launcher_event(obj)
            self.check_deadlines()
            self.check_memory()

    def finished(self) -> bool:
        if self.broken:
            return True
        return self.shutdown_requested and not self.queue and not any(
            w.inflight for w in self.workers.values()
        )

    def drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def spawn(self, slot: int) -> None:
        slots.clear(self.slot_array, slot)
        conn = self.launcher.spawn(slot)
        self.workers[slot] = Worker(slot, Channel(conn, nonblocking=True))

    def terminate_workers(self) -> None:
        """End every worker now (``terminate_workers()``, or an exception leaving the
        ``with`` block): what they run fails, nothing is queued again or replaced; the
        launcher ends them when the loop ends (:meth:`stop_workers`)."""
        self.fail_all_work(BrokenProcessPool(
            "the executor's workers were terminated while this task was pending "
            "(terminate_workers(), kill_workers(), or an exception that left the "
            "executor's with block)"))

    def worker_message(self, w: Worker) -> None:
        conn = w.conn
        if conn is None:  # closed by an earlier event of this round
            return
        try:
            messages = conn.receive()
        except (EOFError, OSError):
            self.release(w)
            if w.exitcode is not None:
                self.worker_ended(w)
            return
        self.requeue_at = 0  # tasks given back go first, in the order they come
        for data in messages:
            self.handle_message(w, data)

    def handle_message(self, w: Worker, data: bytes) -> None:
        kind = data[:1]
        if kind == worker.DONE_KIND:
            self.piece_done(w, data)
        elif kind == worker.READY:
            w.ready = True
            self.startup_failures = 0
        elif kind == worker.INIT_FAILED:
            error = serialize.decode_errors(memoryview(data)[1:],
                                            lambda index: "the initializer")[0]
            self.break_pool(
                f"a worker's initializer failed: {serialize.describe(error)}; the "
                "process pool is not usable anymore", cause=error)
        else:
            raise ValueError(f"unknown message from worker {w.pid}: {bytes(data[:16])!r}")

    def piece_done(self, w: Worker, data: bytes) -> None:
        """A piece's outcomes.  What cannot be unpickled here fails its task alone."""
        _, piece_id, count, seconds, timed, retiring, size = worker.DONE.unpack_from(data)
        piece = w.done()
        if piece.id != piece_id:
            raise RuntimeError(f"worker {w.pid} answered piece {piece_id}, not {piece.id}")
        asked = w.yielding == piece.id
        if asked:
            w.yielding = None
            slots.request_yield(self.slot_array, w.slot, 0)
        if count < len(piece.indices):
            self.give_back(piece, piece.indices[count:], split=asked)
        if count:
            piece.settle(count, data, (seconds, timed), size)
        w.retiring = w.retiring or bool(retiring)
        if w.recycling and not w.inflight:
            self.release(w)

    def handle_pending_events(self) -> None:
        while (event := self.launcher.pending_event()) is not None:
            self.handle_event(event)

    def launcher_event(self, ready: Any) -> None:
        try:
            event = self.launcher.read_event(ready)
        except (EOFError, OSError):
            code = self.launcher.exit_status()
            self.break_pool(f"the fork server (pid {self.launcher.pid}) died "
                            f"{describe_exit(code)}; the process pool is not usable "
                            "anymore")
            return
        self.handle_event(event)

    def handle_event(self, event: tuple) -> None:
        if event[0] == "spawned":
            _, slot, pid = event
            w = self.workers.get(slot)
            if w is not None and w.pid is None:
                w.pid = pid
                with self.pids_changed:
                    self.pids_changed.notify_all()
        elif event[0] == "exited":
            _, pid, exitcode = event
            for w in list(self.workers.values()):
                if w.pid == pid:
                    w.exitcode = exitcode
                    if w.conn is None:
                        self.worker_ended(w)
        elif event[0] == "broken":  # the fork server cannot go on (its loader failed)
            self.break_pool(event[1])

    def worker_ended(self, w: Worker) -> None:
        """Both the end of its connection and its exit status are in: settle its work."""
        if self.workers.get(w.slot) is w:
            del self.workers[w.slot]
        if self.terminating:
            return  # its work has failed already; no replacement
        expected = w.retiring and not w.inflight and w.exitcode == 0
        if not expected:
            self.recover(w)
        if not w.ready and not self.broken and not self.shutdown_requested:
            self.startup_failures += 1
            if self.startup_failures >= STARTUP_FAILURES:
                self.break_pool(f"{self.startup_failures} workers in a row died before "
                                f"they were ready, the last {describe_exit(w.exitcode)}")
        if not self.broken and not (self.shutdown_requested and not self.queue):
            try:
                self.spawn(w.slot)
            except OSError as error:
                self.break_pool(f"cannot start a replacement worker: {error}", cause=error)


    def recover(self, w: Worker) -> None:
        """A worker died: fail the tasks its death is blamed on, queue the rest first
        (:func:`cowmp.crashes.attribute`)."""
        failures, requeue = crashes.attribute(w.inflight, slots.read(self.slot_array, w.slot),
                                              w.ready, w.kill_reason)
        w.inflight.clear()
        for failure in failures:
            failure.piece.job.fail(failure.index, crashes.death_error(
                failure, w.pid, w.exitcode, w.kill_reason,
                lambda piece, index: piece.job.describe(index)))
        self.queue.extendleft(reversed(requeue))

    def release(self, w: Worker) -> None:
        """Close a worker's connection (it has closed its end, or is idle and to leave):
        it is replaced when its exit status comes in."""
        self.waiter.forget(w.conn.conn)
        handles.close(w.conn.conn)
        w.conn = None
        w.eof_at = time.monotonic()

    def break_pool(self, message: str, cause: BaseException | None = None) -> None:
        if self.broken:
            return
        self.broken = message
        error = BrokenProcessPool(message)
        if cause is not None:
            error.__cause__ = cause
        self.fail_all_work(error)

    def fail_all_work(self, error: BaseException) -> None:
        """Fail every queued and running task with ``error``."""
        pieces = list(self.queue)
        self.queue.clear()
        for w in self.workers.values():
            pieces.extend(w.inflight)
            w.inflight.clear()
        for piece in pieces:
            piece.job.fail_all(piece.indices, error)
        for run in list(self.maps):
            # reads no more (not under its lock: the consumer may hold it, reading input)
            run.stopped = error
            run.closed = True

    def stop_workers(self) -> None:
        """Close every worker's connection (they leave), stop and reap the launcher,
        close the pool's own handles."""
        if self.queue and not self.broken:
            self.break_pool("the executor stopped with work still queued")
        for w in self.workers.values():
            if w.conn is not None:
                self.waiter.forget(w.conn.conn)
                handles.close(w.conn.conn)
                w.conn = None
        # a broken pool's running tasks have failed already: their workers need not finish
        how = self.terminating or (TERMINATE if self.broken else LEAVE)
        try:
            self.launcher.stop(how)
        finally:
            self.workers.clear()
            self.close_handles()
