"""The descriptors cowmp opens, each with one owner.

An executor opens sockets, pipes and an epoll descriptor in the parent.  A process forked
from the parent (another executor's fork server, a worker, a child of user code) inherits
a copy of each.  A copy left open there does harm: the other end never sees end-of-file
(a worker that outlives its executor, a fork server that never hears its parent leave),
and the parent's epoll set keeps a registration for a socket the parent closed, because
the kernel drops it only when every copy of that socket is closed.  When the parent then
reuses the number for a new socket, the set holds the number twice and reports the old
socket's readiness as the new one's: a read that blocks forever.

So every such handle is registered here when it is opened and closed in every forked
child at once (the at-fork hooks below, which :mod:`cowmp.stdlib_patches` registers).
Handles are opened and closed under :data:`lock`, which every fork holds from before it
until after it, so that the registry
matches the descriptor table at the moment of the fork: a child never closes a number
that the parent had already closed and reused for another descriptor.  Keep the sections
under the lock short and free of anything that waits on another thread.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["after_fork_in_child", "after_fork_in_parent", "before_fork", "close", "lock",
           "opened"]

#: held while a handle is opened or closed, and across every fork
lock = threading.RLock()
_handles: dict[int, Any] = {}  # id(handle) -> handle (anything with close())


def opened(*handles: Any) -> None:
    """Register handles just opened by this process (to be closed in forked children)."""
    with lock:
        for handle in handles:
            _handles[id(handle)] = handle


def close(*handles: Any) -> None:
    """Close registered handles (None is skipped); errors of a close are ignored."""
    with lock:
        for handle in handles:
            if handle is None:
                continue
            _handles.pop(id(handle), None)
            try:
                handle.close()
            except OSError:
                pass


def before_fork() -> None:
    lock.acquire()


def after_fork_in_parent() -> None:
    lock.release()


def after_fork_in_child() -> None:
    """Close every registered handle, then give the child a new :data:`lock`.  A new
    one, rather than releasing the copy :func:`before_fork` acquired: a program that
    forks from C and runs only Python's after-fork hooks (uWSGI's
    ``--py-call-osafterfork``) never ran :func:`before_fork`, so the copy may be free,
    or held by a thread that does not exist here."""
    global lock
    handles = list(_handles.values())
    _handles.clear()
    for handle in handles:
        try:
            handle.close()
        except OSError:
            pass
    lock = threading.RLock()
