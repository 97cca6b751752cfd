"""cowmp: forked worker processes that keep sharing their parent's memory.

``import cowmp as multiprocessing`` is a drop-in: every name of ``multiprocessing.__all__``
is here, bound to cowmp's default context, whose start method is ``"cowfork"``.  After
``import cowmp``, ``multiprocessing.get_context("cowfork")`` works too.

The design is in ``docs/design.md``; the modules, one responsibility each:

=========================  ===========================================================
the fork                   :mod:`cowmp.forking` (the one place cowmp forks)
the GC freeze              :mod:`cowmp.heap` (the one place the GC is frozen)
the exit                   :mod:`cowmp.exiting` (the one place a process ends)
immortality, sharing       :mod:`cowmp.immortal`, :mod:`cowmp.sharing`
descriptors                :mod:`cowmp.handles` (closed in every forked child)
the context                :mod:`cowmp.context`, :mod:`cowmp.start_method`,
                           :mod:`cowmp.popen` (one cowfork child),
                           :mod:`cowmp.synchronize` (its semaphores)
the standard library       :mod:`cowmp.stdlib_patches` (every change, applied here)
no fork                    :mod:`cowmp.fallback` (loky, imported only there)
the executor               :mod:`cowmp.executor` (public), :mod:`cowmp.pool_manager`
                           (state, manager thread), :mod:`cowmp.dispatch`, :mod:`cowmp.jobs`,
                           :mod:`cowmp.mapping`, :mod:`cowmp.tuning`,
                           :mod:`cowmp.crashes`, :mod:`cowmp.limits`
workers                    :mod:`cowmp.launchers` (the interface),
                           :mod:`cowmp.fork_server`, :mod:`cowmp.spawn_launcher`,
                           :mod:`cowmp.worker`, :mod:`cowmp.slots`,
                           :mod:`cowmp.channel`, :mod:`cowmp.serialize`
around them                :mod:`cowmp.callers` (where warnings point),
                           :mod:`cowmp.progress_bar`, :mod:`cowmp.memory`,
                           :mod:`cowmp.demo`, :mod:`cowmp.__main__`
=========================  ===========================================================
"""

from __future__ import annotations

import importlib
import multiprocessing as _mp
from types import ModuleType

from . import stdlib_patches as _stdlib_patches
from .context import FALLBACK, CowForkContext, CowForkProcess
from .context import Process as Process
from .context import default_context as _default
from .executor import CowProcessPoolExecutor, TaskTimeoutError, WorkerDiedError
from .exiting import exit
from .forking import ForkWithThreadsWarning, fork, install_fork_hooks
from .heap import GC_POLICIES, collect, get_gc_policy, set_gc_policy
from .immortal import SharingWarning, is_immortal
from .serialize import RemoteTraceback, TaskPicklingError, TaskUnpicklingError
from .sharing import is_shared, loaded, preload, share
from .synchronize import ContextMismatchError

_stdlib_patches.install()

__version__ = "0.1.0"

# multiprocessing.__all__, bound to cowmp's default context (as multiprocessing does)
Array = _default.Array
AuthenticationError = _default.AuthenticationError
Barrier = _default.Barrier
BoundedSemaphore = _default.BoundedSemaphore
BufferTooShort = _default.BufferTooShort
Condition = _default.Condition
Event = _default.Event
JoinableQueue = _default.JoinableQueue
Lock = _default.Lock
Manager = _default.Manager
Pipe = _default.Pipe
Pool = _default.Pool
ProcessError = _default.ProcessError
Queue = _default.Queue
RLock = _default.RLock
RawArray = _default.RawArray
RawValue = _default.RawValue
Semaphore = _default.Semaphore
SimpleQueue = _default.SimpleQueue
TimeoutError = _default.TimeoutError
Value = _default.Value
active_children = _default.active_children
allow_connection_pickling = _default.allow_connection_pickling
cpu_count = _default.cpu_count
current_process = _default.current_process
freeze_support = _default.freeze_support
get_all_start_methods = _default.get_all_start_methods
get_context = _default.get_context
get_logger = _default.get_logger
get_start_method = _default.get_start_method
log_to_stderr = _default.log_to_stderr
parent_process = _default.parent_process
reducer = _default.reducer
set_executable = _default.set_executable
set_forkserver_preload = _default.set_forkserver_preload
set_start_method = _default.set_start_method

SUBDEBUG = _mp.SUBDEBUG
SUBWARNING = _mp.SUBWARNING

_MULTIPROCESSING_NAMES = list(_mp.__all__)
for _name in _MULTIPROCESSING_NAMES:  # any name a newer Python adds
    if _name not in globals():
        globals()[_name] = getattr(_default, _name)
del _name

__all__ = [
    *_MULTIPROCESSING_NAMES,
    "FALLBACK",
    "GC_POLICIES",
    "ContextMismatchError",
    "CowProcessPoolExecutor",
    "CowForkContext",
    "CowForkProcess",
    "ForkWithThreadsWarning",
    "RemoteTraceback",
    "SharingWarning",
    "TaskPicklingError",
    "TaskTimeoutError",
    "TaskUnpicklingError",
    "WorkerDiedError",
    "collect",
    "exit",
    "fork",
    "get_gc_policy",
    "install_fork_hooks",
    "is_immortal",
    "is_shared",
    "loaded",
    "preload",
    "set_gc_policy",
    "share",
]


def __getattr__(name: str) -> ModuleType:
    """``cowmp.pool``, ``cowmp.managers``...: multiprocessing's submodules, for drop-in use."""
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"multiprocessing.{name}")
        except ModuleNotFoundError:
            pass
    raise AttributeError(f"module 'cowmp' has no attribute {name!r}")
