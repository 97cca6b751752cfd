"""The cowfork context, cowmp's default context, and their registration in multiprocessing.

``cowmp.get_context("cowfork")`` is a ``multiprocessing`` context like ``"fork"``: its
processes are forked (with the protocol of :mod:`cowmp.forking`), and every factory
(Lock, Event, Queue, Value, Manager, Pool...) makes objects that work in its children.
Where ``os.fork`` is missing, or ``COWMP_FORCE_FALLBACK=1``, the same context starts
processes through loky instead (:mod:`cowmp.fallback`).

Importing cowmp registers ``"cowfork"`` with multiprocessing, so
``multiprocessing.get_context("cowfork")`` and ``set_start_method("cowfork")`` work, and
teaches the standard library's checks for the name ``"fork"`` about it; both are done by
:mod:`cowmp.stdlib_patches`, this module only defines.  It changes no default:
``multiprocessing``'s own default start method stays what it was; cowmp's default
(``cowmp.Process``, ``cowmp.Queue``...) is ``"cowfork"``.  ``cowmp.get_context("loky")``
imports loky's context on demand (docs/design.md §6).
"""

from __future__ import annotations

from multiprocessing import context as mp_context
from multiprocessing import process
from typing import Any

from . import fallback
from . import synchronize as cow_sync
from .start_method import METHOD

__all__ = [
    "FALLBACK",
    "METHOD",
    "CowForkContext",
    "CowForkProcess",
    "Process",
    "cowfork_context",
    "default_context",
    "is_forking_cowfork",
]

#: True when cowfork starts processes through loky instead of forking.
FALLBACK: bool = fallback.fork_missing() or fallback.fallback_forced()


class CowForkProcess(process.BaseProcess):
    """A process started by the cowfork context."""

    _start_method = METHOD

    @staticmethod
    def _Popen(process_obj: process.BaseProcess) -> Any:
        if FALLBACK:
            return fallback.popen_class()(process_obj)
        from .popen import Popen

        return Popen(process_obj)


class CowForkContext(mp_context.BaseContext):
    """The ``"cowfork"`` start method: fork, keep sharing the parent's memory."""

    _name = METHOD
    Process = CowForkProcess

    def _check_available(self) -> None:
        """Always available: it falls back to loky where ``fork()`` is missing."""

    @property
    def forks(self) -> bool:
        """True if this context's processes are forked (False in the loky fallback)."""
        return not FALLBACK

    if FALLBACK:
        # loky's synchronization objects: named semaphores its resource tracker cleans up

        def Lock(self):  # noqa: N802 - multiprocessing's factory names
            return fallback.loky_context().Lock()

        def RLock(self):  # noqa: N802
            return fallback.loky_context().RLock()

        def Semaphore(self, value=1):  # noqa: N802
            return fallback.loky_context().Semaphore(value)

        def BoundedSemaphore(self, value=1):  # noqa: N802
            return fallback.loky_context().BoundedSemaphore(value)

        def Condition(self, lock=None):  # noqa: N802
            return fallback.loky_context().Condition(lock)

        def Event(self):  # noqa: N802
            return fallback.loky_context().Event()

        def Queue(self, maxsize=0, reducers=None):  # noqa: N802
            return fallback.loky_queue("Queue")(maxsize, reducers=reducers,
                                                ctx=self.get_context())

        def SimpleQueue(self, reducers=None):  # noqa: N802
            return fallback.loky_queue("SimpleQueue")(reducers=reducers,
                                                      ctx=self.get_context())

    else:

        def Lock(self):  # noqa: N802
            return cow_sync.Lock(ctx=self.get_context())

        def RLock(self):  # noqa: N802
            return cow_sync.RLock(ctx=self.get_context())

        def Semaphore(self, value=1):  # noqa: N802
            return cow_sync.Semaphore(value, ctx=self.get_context())

        def BoundedSemaphore(self, value=1):  # noqa: N802
            return cow_sync.BoundedSemaphore(value, ctx=self.get_context())


def is_forking_cowfork(ctx: object) -> bool:
    """True for a cowfork context that forks (the standard library's ``"fork"`` cases)."""
    return isinstance(ctx, CowForkContext) and ctx.forks


cowfork_context = CowForkContext()


class Process(process.BaseProcess):
    """``cowmp.Process``: a process started by cowmp's default start method."""

    _start_method = None

    @staticmethod
    def _Popen(process_obj: process.BaseProcess) -> Any:
        return default_context.get_context().Process._Popen(process_obj)

    @staticmethod
    def _after_fork() -> Any:
        return default_context.get_context().Process._after_fork()


class CowDefaultContext(mp_context.DefaultContext):
    """cowmp's module-level context: ``"cowfork"`` unless ``cowmp.set_start_method``."""

    Process = Process

    def get_context(self, method: str | None = None) -> mp_context.BaseContext:
        """As multiprocessing's; ``"loky"`` imports loky's context first (cowmp does not
        import loky where fork exists until it is asked for)."""
        if method == "loky":
            fallback.loky_context()
        return super().get_context(method)

    def get_all_start_methods(self) -> list[str]:
        """The supported start methods, cowmp's default first."""
        methods = [self.get_start_method(allow_none=False), METHOD]
        methods += mp_context._default_context.get_all_start_methods()
        methods += ["loky"]
        return list(dict.fromkeys(methods))


default_context = CowDefaultContext(cowfork_context)


def __getattr__(name: str) -> Any:
    """The rest of ``multiprocessing.context`` (BaseContext, SpawnContext...)."""
    try:
        return getattr(mp_context, name)
    except AttributeError:
        raise AttributeError(f"module 'cowmp.context' has no attribute {name!r}") from None
