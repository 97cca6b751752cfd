"""The one place where cowmp forks: ``os.fork()`` wrapped in the copy-on-write protocol.

Before the fork: warn if other threads run (their locks would stay locked forever in the
child), let :mod:`cowmp.heap` prepare the heap (freeze per policy, GC held off).  After
it, in the child: the inherited heap is frozen, the GC re-enabled for new objects,
cowmp's bookkeeping is reset, and, for a bare fork, the
multiprocessing state inherited from the parent (children, finalizers, after-fork hooks)
is reset the way multiprocessing does it for its own children.

:func:`install_fork_hooks` applies the same protocol to every ``os.fork()`` in the process
(servers such as gunicorn that fork on their own) through ``os.register_at_fork``.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from multiprocessing import process, util
from multiprocessing import queues as mp_queues

from . import callers, exiting, handles, heap

__all__ = ["ForkWithThreadsWarning", "fork", "fork_children", "install_fork_hooks",
           "native_thread_count", "own_thread", "quiesced"]


class ForkWithThreadsWarning(RuntimeWarning):
    """Forking a process in which other threads are running.

    A lock held by another thread at the moment of the fork stays locked forever in the
    child, because the thread that would release it does not exist there.
    """


_lock = threading.RLock()
_local = threading.local()  # .in_protocol: our own fork is running (hooks stand aside)
_hooks_installed = False

# cowmp's own threads (executors' manager threads), each with the lock it holds while it
# works and releases only where it waits, holding nothing else: a fork that holds all of
# them forks while every one of them is at such a point (see quiesced())
_own_threads: dict[threading.Thread, threading.RLock] = {}
#: seconds a fork waits for one of cowmp's threads to reach a safe point; past that (it
#: runs a user's done-callback that blocks, or pickles something huge), the fork goes on
#: and the thread is named by the warning like a foreign one
QUIESCE_TIMEOUT = 5.0
_leaving: weakref.WeakSet[threading.Thread] = weakref.WeakSet()  # done, not yet ended


@contextlib.contextmanager
def own_thread(active: threading.RLock) -> Iterator[None]:
    """Run the calling thread as one of cowmp's own: it holds ``active`` while it works
    (it releases it only where it waits, holding nothing else), so that a fork made by
    cowmp can wait for it to be there and fork safely while it runs."""
    thread = threading.current_thread()
    with active:
        _own_threads[thread] = active
        try:
            yield
        finally:
            _own_threads.pop(thread, None)
            _leaving.add(thread)  # it only returns from here: see quiesced()


@contextlib.contextmanager
def quiesced() -> Iterator[set[threading.Thread]]:
    """Hold every other thread of cowmp's at a point where it waits and holds nothing, and
    hold the descriptor registry (:mod:`cowmp.handles`) steady: what runs inside may open
    handles and fork.  Yields the threads held (they are no danger to a child)."""
    with _lock:
        me = threading.current_thread()
        for thread in list(_leaving):  # a few lines from their end: let them end
            if thread is not me:
                thread.join(1.0)
        held: dict[threading.Thread, threading.RLock] = {}
        try:
            for thread, active in list(_own_threads.items()):
                if thread is not me and active.acquire(timeout=QUIESCE_TIMEOUT):
                    held[thread] = active
            with handles.lock:
                yield set(held)
        finally:
            for active in reversed(held.values()):
                active.release()


def native_thread_count() -> int | None:
    """This process's OS threads (Linux: /proc/self/task); None where unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _foreign_thread_count(python_threads: int) -> int:
    """OS threads that ``threading`` does not know (started by C code), on Linux.

    A Python thread that has just finished is no longer listed by ``threading`` but its
    OS thread lingers for a moment: a non-zero count is re-read briefly before it counts.
    """
    for attempt in range(5):
        native = native_thread_count()
        foreign = 0 if native is None else max(0, native - 1 - python_threads)
        if not foreign:
            return 0
        time.sleep(0.002 * (attempt + 1))
    return foreign


def _fork_safe(thread: threading.Thread) -> bool:
    """multiprocessing's queue feeder threads are built to survive a fork.

    The child never uses their state: multiprocessing's after-fork hooks re-create each
    queue's thread-side locks there, and the semaphores they hold are the kernel's, which
    the parent's feeder releases for both processes.
    """
    return getattr(thread, "_target", None) is mp_queues.Queue._feed


def warn_if_threads(held: set[threading.Thread] = frozenset()) -> bool:
    """Warn, naming them, if threads other than the calling one are alive (other than
    ``held``, cowmp's own threads that :func:`quiesced` holds).  True if it warned.  The
    warning points at the user's line that led to the fork (:mod:`cowmp.callers`)."""
    current = threading.current_thread()
    alive = [t for t in threading.enumerate() if t is not current and t.is_alive()]
    others = [t for t in alive if not _fork_safe(t) and t not in held]
    foreign = _foreign_thread_count(len(alive))
    if not others and not foreign:
        return False
    names = ", ".join(
        f"{t.name!r}{' (daemon)' if t.daemon else ''}" for t in others
    )
    if foreign:
        extra = f"{foreign} thread(s) not started through threading (e.g. by a C library)"
        names = f"{names} and {extra}" if names else extra
    try:
        warnings.warn(
            f"cowmp is forking process {os.getpid()} while other threads are running: "
            f"{names}. Only the forking thread exists in the child: a lock that another "
            "thread holds at this moment stays locked there forever, so the child can "
            "deadlock (in logging, queues, allocators...). Start processes before starting "
            "threads.",
            ForkWithThreadsWarning,
            stacklevel=callers.stacklevel(),
        )
    except ForkWithThreadsWarning as error:
        # The warning is configured as an error.  Raised in a library's own thread (the
        # worker handler of multiprocessing.Pool forks replacements) it would kill that
        # thread and hang its pool, so there it is reported instead.
        if current is threading.main_thread():
            raise
        sys.stderr.write(f"{type(error).__name__} (in thread {current.name!r}): {error}\n")
    return True


def reset_multiprocessing_state() -> None:
    """Give a bare fork child multiprocessing state of its own, as ``_bootstrap`` does.

    The parent's children are not the child's to join, and the parent's finalizers (which
    terminate pools, unlink files...) are not the child's to run.
    """
    process._children = set()
    process._process_counter = itertools.count(1)
    util._finalizer_registry.clear()
    util._run_after_forkers()


def _after_in_child(*, bare: bool) -> None:
    _own_threads.clear()  # they do not exist here
    _leaving.clear()
    heap.after_fork_in_child()
    if bare:
        reset_multiprocessing_state()


def fork() -> int:
    """``os.fork()`` with the copy-on-write protocol.  Returns the child's pid, or 0 in it.

    The child should leave through :func:`cowmp.exit` (flush, multiprocessing finalizers,
    ``os._exit``).  If it leaves through the normal interpreter exit instead, the module
    globals it inherited are pinned first (:func:`cowmp.exiting.pin_inherited_heap`), so
    the teardown does not walk and copy the inherited heap; the exit code is unchanged.
    """
    pid = protocol_fork(bare=True)
    if pid == 0:
        atexit.register(exiting.pin_inherited_heap)
    return pid


def protocol_fork(*, bare: bool, collect: bool = True) -> int:
    """Fork with the protocol.  ``bare``: the child is not a multiprocessing Process.
    ``collect=False``: the heap is frozen, never collected (see heap.freeze_for_fork)."""
    index, pids = fork_children(1, bare=bare, collect=collect)
    return 0 if index == 0 else pids[0]


def fork_children(count: int, *, bare: bool, collect: bool = True) -> tuple[int, list[int]]:
    """Fork ``count`` children one right after the other, under one protocol section:
    returns ``(n, earlier)`` in the n-th child (``earlier``: the pids of the children made
    before it), ``(-1, pids)`` in the parent.  Nothing runs between the forks (each write
    in between would copy a page the child before shares).  If a fork fails after the
    first, the parent gets the pids of those that were made."""
    if not hasattr(os, "fork"):
        raise OSError("os.fork() is not available on this platform; use cowmp.get_context()")
    pids: list[int] = []
    with quiesced() as held:
        warned = warn_if_threads(held=held)
        heap.freeze_for_fork(collect)
        _local.in_protocol = True
        try:
            with warnings.catch_warnings():
                if held and not warned:  # only cowmp's own threads, held: a safe fork
                    warnings.filterwarnings(
                        "ignore", message=r".*multi-threaded, use of fork\(\)",
                        category=DeprecationWarning)
                while len(pids) < count:
                    try:
                        pid = os.fork()
                    except OSError:
                        if not pids:
                            raise
                        break
                    if pid == 0:
                        break
                    pids.append(pid)
        except BaseException:
            heap.after_fork_in_parent()
            raise
        finally:
            _local.in_protocol = False
        if pid == 0:
            _after_in_child(bare=bare)
            return len(pids), pids  # the pids of the children made before it
        heap.after_fork_in_parent()
        return -1, pids


def _hook_before() -> None:
    if not getattr(_local, "in_protocol", False):
        warn_if_threads()
        heap.freeze_for_fork()


def _hook_after_in_parent() -> None:
    if not getattr(_local, "in_protocol", False):
        heap.after_fork_in_parent()


def _hook_after_in_child() -> None:
    if not getattr(_local, "in_protocol", False):
        _after_in_child(bare=True)
        if exiting.fast_exit_for_hooked_children:
            atexit.register(exiting.pin_inherited_heap)


def install_fork_hooks(*, pin_heap_at_exit: bool = True) -> None:
    """Make every ``os.fork()`` in this process follow cowmp's protocol.

    For programs that fork on their own (gunicorn's arbiter, a process manager): before
    each fork the heap is frozen for the GC (and a warning names any running threads);
    in the child the GC is re-enabled and multiprocessing state is reset.  With
    ``pin_heap_at_exit`` (default), a child that leaves through the normal interpreter
    exit (``sys.exit``, end of program) keeps the inherited heap alive instead of tearing
    it down object by object, which would copy every page; its exit code is unchanged.

    Idempotent.  ``os.register_at_fork`` hooks cannot be removed; call
    ``install_fork_hooks(pin_heap_at_exit=False)`` to turn the exit part off again.
    """
    global _hooks_installed
    exiting.fast_exit_for_hooked_children = bool(pin_heap_at_exit)
    if _hooks_installed:
        return
    if not hasattr(os, "register_at_fork"):
        raise OSError("os.register_at_fork() is not available on this platform")
    os.register_at_fork(
        before=_hook_before,
        after_in_parent=_hook_after_in_parent,
        after_in_child=_hook_after_in_child,
    )
    _hooks_installed = True

