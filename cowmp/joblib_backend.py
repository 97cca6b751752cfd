"""joblib's ``"cowfork"`` backend: ``joblib.Parallel``, and so scikit-learn's ``n_jobs=``,
run on :class:`~cowmp.executor.CowProcessPoolExecutor` (docs/design.md §7).

This module owns three things, and imports joblib only when one of them is used (joblib
is optional: importing cowmp never imports it):

* **The backend** (:func:`backend_class`, also ``cowmp.joblib_backend.CowforkBackend``).
  Each ``Parallel`` call (or each ``with Parallel(...)`` block) gets an executor of its
  own, created when joblib configures the backend and shut down when the call ends: its
  fork server is a snapshot of the process at that moment (§7), so whatever the caller
  holds then is inherited, objects passed to :func:`cowmp.share` before the call travel
  by reference (§5), and no fork server outlives the call to keep pages of data the
  caller has since dropped.  joblib hands the executor a ``BatchedCalls`` (the tasks of a
  batch, with their arguments) as the function of one ``submit``; cowmp pickles it with
  the executor's pickler (:mod:`cowmp.serialize`), whose ``persistent_id`` sees every
  object inside, so a shared argument costs a few bytes however deep in the batch it
  lies.  What loky's backend does, this one does the same way: ``n_jobs=-1`` counts the
  CPUs as joblib does; nested calls in a task get joblib's default (threads, then
  sequential); an explicit cowfork ``Parallel`` inside a worker (a daemonic process) or
  below threads runs sequentially, with a warning; results come back through the
  future's callback, so ``return_as="generator"`` (and ``"generator_unordered"`` where
  joblib has it) and ``timeout=`` work; an error, a timeout or a generator dropped early
  aborts the call: queued batches are cancelled and the workers terminated
  (``terminate_workers``, §11).  joblib's memmapping options (``max_nbytes``,
  ``mmap_mode``, ``temp_folder``) have no effect: nothing is dumped to disk.
* **Inner thread pools in the workers.**  As loky's backend does (through environment
  variables, for its spawned workers), workers get at most ``cpu_count() // n_jobs``
  threads in BLAS pools, or ``inner_max_num_threads``.  Libraries are loaded already in
  a forked worker, too late for variables: the limits are set through threadpoolctl (when
  installed) in this process for the moment its executor's fork server is forked, which
  and whose workers inherit them, and restored right after.  OpenMP gets the same limit,
  or one thread whenever this process runs threads that ``threading`` does not know at
  that moment: GNU OpenMP (libgomp, bundled with scikit-learn's wheels) keeps its thread
  pool across a fork, and a forked child whose parent had used it hangs in its next
  parallel region unless it runs that region alone (§12, "Foreign threads").  Spawned
  workers (the fallback, §6) set the variables and the limits themselves.
* **Registration** under the name ``"cowfork"``, whichever of joblib and cowmp is
  imported first: :func:`register` (explicit, idempotent), and
  :func:`install_import_hook` (called by :func:`cowmp.stdlib_patches.install`), which
  registers at once if ``joblib.parallel`` is loaded, and otherwise puts a finder on
  ``sys.meta_path`` that finds nothing itself: when ``joblib.parallel`` is about to be
  loaded it lets the next finders find it, and has its loader call :func:`register` right
  after the module has run; then it leaves ``sys.meta_path``.  joblib has no entry point
  for backends, and its table of backends lives in ``joblib.parallel`` itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import multiprocessing
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

__all__ = ["NAME", "LargeArgumentWarning", "backend_class", "install_import_hook",
           "register"]

#: the backend's name for joblib (``parallel_config(backend=NAME)``)
NAME = "cowfork"
#: an argument at least this large (``nbytes``) that is pickled for each task is worth a
#: warning (once per Parallel call): :func:`cowmp.share` would send it by reference
LARGE_ARGUMENT_BYTES = 64 * 1024 * 1024
#: the executor's options that the backend passes on (``parallel_config(backend=
#: "cowfork", task_timeout=60)``, or ``Parallel(..., task_timeout=60)``)
EXECUTOR_OPTIONS = ("max_tasks_per_child", "task_timeout", "max_private_memory_per_child")
#: the variables loky's backend sets in its workers (joblib's MAX_NUM_THREADS_VARS)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS",
                     "NUMEXPR_NUM_THREADS")


class LargeArgumentWarning(UserWarning):
    """A large argument of a joblib task is pickled for every batch that carries it (it
    was not passed to :func:`cowmp.share` before the ``Parallel`` call)."""


# -- registration --------------------------------------------------------------------------

def register() -> type:
    """Register the ``"cowfork"`` backend with joblib (importing joblib); return its class.
    Idempotent.  ``ImportError`` if joblib is not installed."""
    try:
        from joblib.parallel import BACKENDS, register_parallel_backend
    except ImportError as error:
        raise ImportError("cowmp's joblib backend needs joblib: pip install "
                          "'cowmp[joblib]' (or joblib)") from error
    cls = backend_class()
    if BACKENDS.get(NAME) is not cls:
        register_parallel_backend(NAME, cls)
    return cls


def _register_after_import(module: Any) -> None:
    """Called right after ``joblib.parallel`` has run: register, never breaking joblib's
    import (a failure is a warning)."""
    try:
        register()
    except Exception as error:  # noqa: BLE001 - joblib must import whatever happens here
        warnings.warn(f"cowmp could not register its joblib backend {NAME!r}: "
                      f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)


class _JoblibFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself.  Asked for ``joblib.parallel``, it lets the finders after it
    find the module and makes its loader register the backend once the module has run
    (module docstring); then it leaves ``sys.meta_path``."""

    TARGET = "joblib.parallel"

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.TARGET:
            return None
        spec = None
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec  # nothing to hook: register() stays available
        spec.loader = _RegisteringLoader(loader, self)
        return spec

    def remove(self) -> None:
        with _hook_lock:
            while self in sys.meta_path:
                sys.meta_path.remove(self)


class _RegisteringLoader(importlib.abc.Loader):
    """``joblib.parallel``'s own loader, which then registers the backend; once the module
    has run, it is the wrapped loader's again (``__loader__``, ``__spec__.loader``)."""

    def __init__(self, loader: Any, finder: _JoblibFinder) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        # the module keeps no trace of this loader
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        self._finder.remove()
        _register_after_import(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


_hook_lock = threading.Lock()


def install_import_hook() -> None:
    """Make joblib know ``"cowfork"`` whichever is imported first: register now if
    ``joblib.parallel`` is loaded, else when it is (module docstring).  Imports nothing;
    idempotent."""
    module = sys.modules.get(_JoblibFinder.TARGET)
    if module is not None and hasattr(module, "register_parallel_backend"):
        _register_after_import(module)
        return
    with _hook_lock:
        if not any(isinstance(finder, _JoblibFinder) for finder in sys.meta_path):
            sys.meta_path.insert(0, _JoblibFinder())


# -- the workers' inner thread pools -------------------------------------------------------

def _foreign_threads() -> int | None:
    """Threads of this process that ``threading`` does not know (started by C code), on
    Linux; None where that cannot be told."""
    from .forking import native_thread_count

    native = native_thread_count()
    return None if native is None else max(0, native - threading.active_count())


def _thread_pools() -> list:
    """threadpoolctl's controllers of this process's thread pools ([] without it)."""
    try:
        from threadpoolctl import ThreadpoolController

        return list(ThreadpoolController().lib_controllers)
    except Exception:  # noqa: BLE001 - not installed, or cannot read: no limits
        return []


def _set_threads(library: Any, count: int) -> None:
    try:
        library.set_num_threads(count)
    except Exception as error:  # noqa: BLE001 - a limit is not worth failing the call
        warnings.warn(f"cowmp's joblib backend could not set the threads of "
                      f"{getattr(library, 'filepath', library)}: {error!r}",
                      RuntimeWarning, stacklevel=1)


@contextlib.contextmanager
def limited_thread_pools(blas: int, openmp: int) -> Iterator[None]:
    """Around the fork of an executor's fork server: this process's BLAS pools at most
    ``blas`` threads, OpenMP at most ``openmp`` (module docstring), restored after.  The
    fork server and every worker it forks inherit the limits; none of them pays for
    setting them (OpenBLAS, which shuts its pool down at each fork, restarts it in a
    process that sets its size: some 5-35 ms a worker, measured)."""
    changed = _limit_thread_pools(blas, openmp)
    try:
        yield
    finally:
        for library, count in changed:
            _set_threads(library, count)


def limit_inner_threads(blas: int, openmp: int) -> None:
    """The initializer of workers that are not forked (the fallback): the limits of
    :func:`limited_thread_pools`, and the environment variables that loky's backend sets
    (where this process has none), read by libraries loaded afterwards."""
    for variable in _THREAD_VARIABLES:
        os.environ.setdefault(variable, str(openmp if variable == "OMP_NUM_THREADS"
                                            else blas))
    _limit_thread_pools(blas, openmp)


def _limit_thread_pools(blas: int, openmp: int) -> list[tuple[Any, int]]:
    """Bring this process's BLAS pools down to ``blas`` threads and OpenMP's to
    ``openmp``; return the pools changed, with their thread counts before."""
    changed = []
    for library in _thread_pools():
        limit = openmp if library.user_api == "openmp" else blas
        try:
            count = library.num_threads
        except Exception:  # noqa: BLE001 - cannot be read: left as it is
            continue
        if count > limit:
            _set_threads(library, limit)
            changed.append((library, count))
    return changed


# -- the backend -------------------------------------------------------------------------------

def _nbytes(value: object) -> int:
    size = getattr(value, "nbytes", 0)
    return size if isinstance(size, int) else 0


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@functools.cache
def backend_class() -> type:
    """The backend's class, a subclass of joblib's ``ParallelBackendBase`` (imports
    joblib)."""
    from joblib._parallel_backends import (
        AutoBatchingMixin,
        FallbackToBackend,
        ParallelBackendBase,
        SequentialBackend,
    )
    from joblib.parallel import cpu_count

    class CowforkBackend(AutoBatchingMixin, ParallelBackendBase):
        """joblib tasks on a :class:`~cowmp.executor.CowProcessPoolExecutor` made for
        each ``Parallel`` call (module docstring).  Options: the executor's
        ``max_tasks_per_child``, ``task_timeout`` and ``max_private_memory_per_child``,
        given to ``parallel_config(backend="cowfork", ...)`` or to ``Parallel``."""

        supports_retrieve_callback = True
        supports_inner_max_num_threads = True
        supports_sharedmem = False
        uses_threads = False
        default_n_jobs = 1

        def __init__(self, nesting_level: int | None = None,
                     inner_max_num_threads: int | None = None, **options: Any) -> None:
            unknown = sorted(set(options) - set(EXECUTOR_OPTIONS))
            if unknown:
                raise TypeError(f"the {NAME!r} joblib backend has no option "
                                f"{', '.join(map(repr, unknown))} (it takes "
                                f"{', '.join(EXECUTOR_OPTIONS)})")
            super().__init__(nesting_level=nesting_level,
                             inner_max_num_threads=inner_max_num_threads)
            self._options = options
            self._call_options = options
            self._executor: Any = None
            self._calls = 0  # Parallel calls configured and not yet terminated
            self._aborted = False
            self._n_jobs = 1
            self._shared_keys: frozenset[int] = frozenset()
            self._warned = False
            self.parallel: Any = None

        def __getstate__(self) -> dict:
            """Pickled (as a nested backend, say) without its executor or its calls."""
            state = self.__dict__.copy()
            state.update(_executor=None, parallel=None, _calls=0)
            return state

        def effective_n_jobs(self, n_jobs: int | None) -> int:
            """As loky's backend: -1 is every CPU joblib counts, -2 all but one...; 1
            in a daemonic process (a worker) or below threads, with a warning."""
            if n_jobs == 0:
                raise ValueError("n_jobs == 0 in Parallel has no meaning")
            if n_jobs is None:
                return 1
            if multiprocessing.current_process().daemon:
                if n_jobs != 1:
                    warnings.warn(f"{NAME}-backed parallel loops cannot run in a daemonic "
                                  "process (a worker of a process pool), setting n_jobs=1",
                                  stacklevel=3)
                return 1
            if not (_in_main_thread() or self.nesting_level == 0):
                if n_jobs != 1:
                    warnings.warn(f"{NAME}-backed parallel loops cannot be nested below "
                                  "threads, setting n_jobs=1", stacklevel=3)
                return 1
            if n_jobs < 0:
                n_jobs = max(cpu_count() + 1 + n_jobs, 1)
            return n_jobs

        def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: Any = None,
                      require: Any = None, **options: Any) -> int:
            """Start the executor of this call; return its number of workers.  (A call
            begun while another one on this backend is still running, two generators
            under one ``parallel_config`` say, shares the other's executor.)"""
            n_jobs = self.effective_n_jobs(n_jobs)
            if n_jobs == 1:
                raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
            self.parallel = parallel
            if self._executor is None:
                self._call_options = {**self._options, **{
                    key: value for key, value in options.items() if key in EXECUTOR_OPTIONS}}
                self._start(n_jobs)
            self._calls += 1
            return self._n_jobs

        def _start(self, n_jobs: int) -> None:
            from . import sharing
            from .context import FALLBACK
            from .executor import CowProcessPoolExecutor

            explicit = self.inner_max_num_threads
            blas = explicit or max(cpu_count() // n_jobs, 1)
            foreign = _foreign_threads()
            openmp = blas if foreign == 0 or FALLBACK else 1
            self._n_jobs = n_jobs
            self._aborted = False
            self._warned = FALLBACK  # nothing can be shared there: no advice to give
            self._shared_keys = frozenset(sharing.shared_objects())
            if FALLBACK:  # spawned workers: each sets its limits
                self._executor = CowProcessPoolExecutor(
                    max_workers=n_jobs, initializer=limit_inner_threads,
                    initargs=(blas, openmp), **self._call_options)
                return
            with limited_thread_pools(blas, openmp):  # the fork server inherits them
                self._executor = CowProcessPoolExecutor(max_workers=n_jobs,
                                                        **self._call_options)

        def submit(self, func: Any, callback: Any = None) -> Future:
            """Run ``func`` (a batch of tasks) in a worker; ``callback`` gets its future
            once it is done."""
            executor = self._executor
            if executor is None and not self._aborted:
                raise RuntimeError(f"the {NAME!r} backend has no executor: the Parallel "
                                   "call it served has ended")
            if not self._warned:
                self._check_arguments(func)
            try:
                if executor is None:
                    raise RuntimeError("no executor")
                future = executor.submit(func)
            except (RuntimeError, BrokenProcessPool):
                if executor is self._executor and not self._aborted:
                    raise
                # joblib dispatched (from a callback) while the call was being aborted
                future = Future()
                future.set_exception(RuntimeError(
                    f"the {NAME!r} backend's workers were terminated: a Parallel call on "
                    "it failed or was aborted"))
            if callback is not None:
                # a future cancelled by abort_everything calls it in the aborting thread,
                # which holds none of the executor's locks then
                future.add_done_callback(callback)
            return future

        apply_async = submit  # joblib before 1.5 calls it so

        def retrieve_result_callback(self, future: Future) -> Any:
            return future.result()

        def _check_arguments(self, func: Any) -> None:
            """Warn (once per call) about a large argument that is pickled per task."""
            for item in getattr(func, "items", ()):
                try:
                    _, args, kwargs = item
                    values = [*args, *kwargs.values()]
                except (TypeError, ValueError, AttributeError):
                    continue
                for value in values:
                    size = _nbytes(value)
                    if size >= LARGE_ARGUMENT_BYTES and id(value) not in self._shared_keys:
                        self._warned = True
                        warnings.warn(
                            f"an argument of {size / 2**20:,.0f} MiB "
                            f"({type(value).__module__}.{type(value).__qualname__}) is "
                            f"pickled for every joblib batch that uses it: pass it to "
                            "cowmp.share() before the Parallel call (before "
                            "cross_validate, GridSearchCV.fit...) to send it by reference",
                            LargeArgumentWarning, stacklevel=2)
                        return

        def terminate(self) -> None:
            """A call has ended: once no other call uses it, shut the executor down (its
            work is done)."""
            self._calls = max(self._calls - 1, 0)
            if not self._calls:
                executor, self._executor = self._executor, None
                if executor is not None:
                    executor.shutdown(wait=True)
            self.reset_batch_stats()

        def abort_everything(self, ensure_ready: bool = True) -> None:
            """An error, a timeout or a dropped generator: cancel what is queued and
            terminate the workers; with ``ensure_ready``, start a new executor for the
            rest of a ``with Parallel(...)`` block.

            The executor cancels the queued futures outside its own lock, so their
            callbacks (joblib's, which take the call's lock) may wait here for a thread
            that is submitting the next batch: that submit fails at once, the executor
            being shut down, and releases the call's lock."""
            executor, self._executor = self._executor, None
            self._aborted = True
            if executor is not None:
                executor.terminate_workers()
            if ensure_ready:
                self._start(self._n_jobs)

    CowforkBackend.__module__ = __name__
    CowforkBackend.__qualname__ = "CowforkBackend"  # pickled by reference: __getattr__
    return CowforkBackend


def __getattr__(name: str) -> Any:
    """``CowforkBackend``: the backend's class, built on first use (imports joblib)."""
    if name == "CowforkBackend":
        return backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
