"""Dask's ``distributed`` integration: a worker plugin that gives each Dask worker a
:class:`~cowmp.CowProcessPoolExecutor` whose data is loaded once (cowmp.dask).

:class:`CowExecutorPlugin` owns the executor's life on a Dask worker: ``setup`` starts it
(its fork server a new interpreter, since a Dask worker runs threads: the server imports
``distributed``, runs the loader once, shares what it returns and forks the workers,
which read it through :func:`cowmp.loaded`), waits until the data is loaded, and
registers it as ``worker.executors[name]``; ``teardown`` unregisters it and shuts it
down.  Tasks annotated ``dask.annotate(executor=name)`` then run in its processes.

:class:`RetryingExecutor` owns healing as Dask sees it: the executor registered with Dask
is a thin :class:`concurrent.futures.Executor` over the pool, which runs a task again
when the process running it died (:class:`cowmp.WorkerDiedError`: the pool has replaced
the process already), up to ``retries`` times, and then lets the error through, so that
Dask reports it as the task's error.  When the pool itself breaks (its fork server
died), it builds a new one, which loads the data again, and the task runs there (a
retry too).  Dask itself sees one call that returned late: no task is lost, the Dask
worker is not restarted, and nothing depends on the form of Dask's private result
messages.

Only this module imports ``distributed`` (``import cowmp`` does not import it); without
it, importing this module raises an ImportError that says what to install.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import BrokenExecutor, Executor, Future, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

try:
    from distributed import WorkerPlugin
    from distributed.core import Status
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"cowmp.dask needs Dask's distributed package ({error}): "
        "pip install 'cowmp[dask]'"
    ) from error

from .crashes import WorkerDiedError
from .executor import CowProcessPoolExecutor, check_callable, check_count, check_worker_options
from .serialize import TaskPicklingError

if TYPE_CHECKING:
    from distributed import Worker

__all__ = ["DASK_EXECUTORS", "CowExecutorPlugin", "RetryingExecutor"]

#: the executors every Dask worker has of its own: a plugin cannot take their names
DASK_EXECUTORS = frozenset({"default", "offload", "actor"})

#: executor options the plugin passes on (``mp_context`` is not one: the fork server is
#: always a new interpreter, the only safe start in a process that runs threads)
_OPTIONS = ("initializer", "initargs", "max_tasks_per_child", "task_timeout",
            "max_private_memory_per_child")


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The executor options, checked here, on the client, rather than later on each
    worker (the executor's own checks: :func:`cowmp.executor.check_worker_options`)."""
    if "mp_context" in options:
        raise TypeError("CowExecutorPlugin takes no mp_context: on a Dask worker the fork "
                        "server always starts as a new interpreter (the worker runs threads)")
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"CowExecutorPlugin got unexpected keyword argument(s) "
                        f"{', '.join(unknown)} (executor options: {', '.join(_OPTIONS)})")
    checked = dict(options)
    if "initargs" in checked:
        checked["initargs"] = tuple(checked["initargs"])
    check_worker_options(checked.get("initializer"), checked.get("max_tasks_per_child"),
                         checked.get("task_timeout"),
                         checked.get("max_private_memory_per_child"))
    return checked


class _Loader:
    """What the fork server runs as the executor's loader: it imports ``distributed``
    first (a Dask task arrives as a call of ``distributed.worker``'s function, which every
    worker would otherwise import on its own, in private memory), then the user's loader.
    Its repr is the user loader's, so that a loader error names it.

    ``environ_defaults`` fills the variables of the fork server's environment that the
    Dask worker does not set, before the server imports anything
    (:func:`cowmp.fork_server._environment`): those Dask's nanny gives the worker
    processes it starts (``distributed.nanny.pre-spawn-environ``: one thread for OpenMP,
    MKL and OpenBLAS).  A worker that a nanny started has them already; one that runs in
    the client's process (``processes=False``) has not, and NumPy, which ``distributed``
    imports, would start BLAS threads in the fork server before it forks the processes."""

    def __init__(self, loader: Callable[..., object] | None, args: tuple,
                 environ_defaults: dict[str, str] | None = None) -> None:
        self.loader = loader
        self.args = args
        self.environ_defaults = environ_defaults or {}

    def __call__(self) -> object:
        import distributed.worker  # noqa: F401 - inherited by every worker

        return None if self.loader is None else self.loader(*self.args)

    def __repr__(self) -> str:
        return repr(self.loader)


def _process_environ() -> dict[str, str]:
    """The environment Dask's nanny gives the worker processes it starts."""
    import dask.config

    variables = dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}
    return {str(key): str(value) for key, value in variables.items()}


def _ready() -> int:
    return os.getpid()


class RetryingExecutor(Executor):
    """A :class:`concurrent.futures.Executor` over ``executor`` that runs a task again,
    up to ``retries`` times, when the worker process running it died
    (:class:`cowmp.WorkerDiedError`; the pool has replaced that process already), then
    lets the last error through.  Other errors (the task's own, a timeout, a pickling
    error) pass at once.

    ``rebuild``, a function returning a new pool, heals a pool that broke (its fork
    server died: the pool's futures fail with BrokenProcessPool): the broken pool is put
    away, ``rebuild()`` makes the one that replaces it, and the tasks that failed with
    it run again there within their retries; a task submitted to a broken pool is
    simply submitted to the new one.  A pool that breaks before any task of it has
    completed is not rebuilt (what broke it would break the next one: a failing loader,
    say), and neither is a pool without ``rebuild``: its BrokenProcessPool passes.

    The pool in use is ``.executor``; ``.retried`` counts the runs started again and
    ``.rebuilt`` the pools built to replace a broken one."""

    def __init__(self, executor: CowProcessPoolExecutor, retries: int = 1, *,
                 rebuild: Callable[[], CowProcessPoolExecutor] | None = None) -> None:
        _check_pool(executor, "executor")
        check_count(retries, "retries", 0)
        check_callable(rebuild, "rebuild")
        self.executor = executor
        self.retries = retries
        self.retried = 0
        self.rebuilt = 0
        self._rebuild = rebuild
        self._proven = False  # a task of the pool in use has completed
        self._closed = False
        self._lock = threading.Lock()
        # the tasks waiting to run again once a broken pool is replaced, by broken pool
        self._waiting: dict[CowProcessPoolExecutor, list[tuple[_Attempts, BaseException]]] = {}

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` on the pool; the Future completes with its
        result, or its last error once the retries are spent."""
        outer: Future = Future()
        _Attempts(self, outer, fn, args, kwargs).start()
        return outer

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shut the pool down (its own ``shutdown``); no pool is rebuilt after this."""
        with self._lock:
            self._closed = True
            pool = self.executor
        pool.shutdown(wait, cancel_futures=cancel_futures)

    def terminate_workers(self) -> None:
        """Shut down, terminating the pool's processes now (its ``terminate_workers``)."""
        with self._lock:
            self._closed = True
            pool = self.executor
        pool.terminate_workers()

    def _submit_to_pool(self, fn: Callable[..., Any], args: tuple,
                        kwargs: dict[str, Any]) -> tuple[CowProcessPoolExecutor, Future]:
        """Submit to the pool in use, rebuilding it first if it is found broken; return
        the pool and the Future (a submission refused raises, as ``submit`` does)."""
        pool = self.executor
        try:
            return pool, pool.submit(fn, *args, **kwargs)
        except BrokenExecutor:  # submit raises only a pool's break
            pool = self._replace(pool)
            return pool, pool.submit(fn, *args, **kwargs)

    def _replace(self, broken: CowProcessPoolExecutor) -> CowProcessPoolExecutor:
        """The pool that replaces ``broken``: built here if no other thread built it
        already; ``broken`` is put away.  Raises BrokenProcessPool when there is no
        ``rebuild`` or the broken pool never completed a task, RuntimeError after
        shutdown, and what ``rebuild`` raises."""
        with self._lock:
            if self.executor is not broken:  # another task rebuilt it meanwhile
                return self.executor
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._rebuild is None or not self._proven:
                raise BrokenProcessPool(
                    "the cowmp pool broke (its fork server died)" if self._rebuild is None
                    else "the cowmp pool broke before it completed any task: not built "
                         "again, since what broke it would break the next one")
            pool = self._rebuild()
            _check_pool(pool, "rebuild()")
            self.executor, self._proven = pool, False
            self.rebuilt += 1
        broken.shutdown(wait=False, cancel_futures=True)
        return pool

    def _after_break(self, broken: CowProcessPoolExecutor, attempt: _Attempts,
                     error: BaseException) -> None:
        """Run ``attempt``, which failed with ``error`` as ``broken`` broke, again on the
        pool that replaces it.  One thread per broken pool replaces it, then resubmits
        every attempt that waited meanwhile: building a pool forks, which must not
        happen on the broken pool's manager thread, which reports the break (and calls
        this)."""
        with self._lock:
            waiting = self._waiting.setdefault(broken, [])
            waiting.append((attempt, error))
            if len(waiting) > 1:  # the thread is under way
                return
        threading.Thread(target=self._replace_and_resubmit, args=(broken,),
                         name="cowmp-dask-rebuild", daemon=True).start()

    def _replace_and_resubmit(self, broken: CowProcessPoolExecutor) -> None:
        try:
            pool: CowProcessPoolExecutor | None = self._replace(broken)
            refusal = None
        except Exception as error:  # noqa: BLE001 - each waiting task fails with it
            pool, refusal = None, error
        with self._lock:
            waiting = self._waiting.pop(broken)
        for attempt, error in waiting:
            if pool is None:
                attempt.refused(error, refusal)
            else:
                attempt.again(error, pool)

    def _completed(self, pool: CowProcessPoolExecutor) -> None:
        with self._lock:
            if pool is self.executor:
                self._proven = True

    def _count_retry(self) -> None:
        with self._lock:
            self.retried += 1

    def __repr__(self) -> str:
        return f"<RetryingExecutor retries={self.retries} over {self.executor!r}>"


def _pool_broke(error: BaseException | None) -> bool:
    """Does a task's ``error`` say that its pool broke?  TaskUnpicklingError, also a
    BrokenProcessPool for code written for the standard executor, fails its task alone:
    a result or exception that could not be rebuilt, its pool working on."""
    return isinstance(error, BrokenExecutor) and not isinstance(error, TaskPicklingError)


def _check_pool(pool: object, what: str) -> None:
    if not isinstance(pool, CowProcessPoolExecutor):
        raise TypeError(f"{what} must be a cowmp.CowProcessPoolExecutor, not "
                        f"{type(pool).__name__}")


class _Attempts:
    """One task's runs on a :class:`RetryingExecutor`, behind one outer Future."""

    def __init__(self, owner: RetryingExecutor, outer: Future, fn: Callable[..., Any],
                 args: tuple, kwargs: dict[str, Any]) -> None:
        self.owner, self.outer = owner, outer
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.left = owner.retries
        self.current: Future | None = None
        self.pool: CowProcessPoolExecutor | None = None  # where ``current`` runs
        self.lock = threading.Lock()

    def start(self) -> None:
        """The first run: an error submitting it (executor shut down, pool broken and
        not rebuilt) is raised here, as ``submit`` raises it."""
        self.watch(*self.owner._submit_to_pool(self.fn, self.args, self.kwargs))
        self.outer.add_done_callback(self.outer_done)

    def watch(self, pool: CowProcessPoolExecutor, inner: Future) -> None:
        with self.lock:
            self.current, self.pool = inner, pool
        inner.add_done_callback(self.inner_done)

    def outer_done(self, outer: Future) -> None:
        if outer.cancelled():  # the caller cancelled (asyncio does, for a cancelled await)
            with self.lock:
                current = self.current
            if current is not None:
                current.cancel()

    def inner_done(self, inner: Future) -> None:
        """Runs where the inner Future completes (the pool's manager thread): settle the
        outer Future, or submit the task once more (no blocking here)."""
        if self.outer.done():
            return
        if inner.cancelled():  # the pool was shut down with cancel_futures
            # Dask awaits the outer Future: a CancelledError there would end its execute()
            # coroutine, not the task; a RuntimeError is reported as the task's error
            self.settle(error=RuntimeError(
                "the cowmp executor was shut down before the task ran (its Dask plugin "
                "was removed, or the worker is closing)"))
            return
        error = inner.exception()
        pool = self.pool
        assert pool is not None
        if not _pool_broke(error):
            self.owner._completed(pool)
        if isinstance(error, WorkerDiedError) and self.left > 0:
            self.left -= 1
            self.again(error, pool)
        elif _pool_broke(error) and self.left > 0 and self.owner._rebuild is not None:
            self.left -= 1
            self.owner._after_break(pool, self, error)
        elif error is None:
            self.settle(result=inner.result())
        else:
            self.settle(error=error)

    def again(self, error: BaseException, pool: CowProcessPoolExecutor) -> None:
        """Run the task once more, on ``pool``; if that is refused (shut down meanwhile),
        the task fails with ``error``, the refusal as its context."""
        try:
            again = pool.submit(self.fn, *self.args, **self.kwargs)
        except Exception as refused:  # noqa: BLE001 - the first error is the task's
            self.refused(error, refused)
            return
        self.owner._count_retry()
        self.watch(pool, again)
        if self.outer.cancelled():  # meanwhile: outer_done saw the previous run
            again.cancel()

    def refused(self, error: BaseException, refusal: BaseException) -> None:
        error.__context__ = refusal
        self.settle(error=error)

    def settle(self, *, result: Any = None, error: BaseException | None = None) -> None:
        try:
            if error is None:
                self.outer.set_result(result)
            else:
                self.outer.set_exception(error)
        except InvalidStateError:
            pass  # cancelled by the caller meanwhile


class CowExecutorPlugin(WorkerPlugin):
    """A Dask worker plugin: each worker gets a :class:`~cowmp.CowProcessPoolExecutor` of
    ``max_workers`` processes (default: the worker's ``nthreads``, as many tasks as it
    runs at once), registered as ``worker.executors[name]``.

    ``loader(*loader_args)`` runs once per Dask worker, in the executor's fork server (a
    new interpreter); what it returns is shared by the executor's processes, which read
    it through :func:`cowmp.loaded`.  Run tasks there with
    ``with dask.annotate(executor=name): client.submit(...)``; tasks not annotated stay on
    Dask's threads.  A task whose process dies is run again up to ``retries`` times
    (:class:`RetryingExecutor`) before Dask sees :class:`cowmp.WorkerDiedError`.  If
    the executor's fork server dies, a new executor is built in its place: the loader
    runs again there, and the tasks that failed with the old one run again (within
    their retries).

    A Dask worker runs at most ``nthreads`` tasks at once, whichever executor runs them:
    give it as many threads as it should run processes (``--nthreads``,
    ``threads_per_worker``); processes beyond that stay idle.

    ``executor_options``: ``initializer``, ``initargs``, ``max_tasks_per_child``,
    ``task_timeout``, ``max_private_memory_per_child``, as for the executor.  ``name`` is
    also the plugin's name: registering another plugin of that name replaces this one.

    ``client.register_plugin(CowExecutorPlugin(...))`` returns once every worker's
    executor has loaded its data and started a process; a loader that fails makes it
    raise that error (named).  Tasks and results travel to the processes by value.
    """

    def __init__(self, name: str = "cowmp", max_workers: int | None = None,
                 loader: Callable[..., object] | None = None,
                 loader_args: Iterable[Any] = (), retries: int = 1,
                 **executor_options: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, not {type(name).__name__}")
        if not name.strip():
            raise ValueError("name must be a non-empty string (the executor's name in "
                             "dask.annotate(executor=...))")
        if name in DASK_EXECUTORS:
            raise ValueError(f"name {name!r} is one of Dask's own executors "
                             f"({', '.join(sorted(DASK_EXECUTORS))}): choose another")
        if max_workers is not None:
            check_count(max_workers, "max_workers", 1)
        check_callable(loader, "loader")
        if isinstance(loader_args, (str, bytes)) or not isinstance(loader_args, Iterable):
            raise TypeError(f"loader_args must be a tuple of arguments, not "
                            f"{type(loader_args).__name__}")
        loader_args = tuple(loader_args)
        if loader is None and loader_args:
            raise ValueError("loader_args given without a loader")
        check_count(retries, "retries", 0)
        self.name = name
        self.max_workers = max_workers
        self.loader = loader
        self.loader_args = loader_args
        self.retries = retries
        self.executor_options = _check_options(executor_options)
        self._executor: RetryingExecutor | None = None  # on the worker, after setup

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_executor"] = None  # an executor is not sent anywhere
        return state

    def __repr__(self) -> str:
        return (f"CowExecutorPlugin(name={self.name!r}, max_workers={self.max_workers!r}, "
                f"loader={self.loader!r}, retries={self.retries!r})")

    @property
    def executor(self) -> RetryingExecutor | None:
        """On a worker after ``setup``: the executor registered with Dask (its pool is
        ``.executor.executor``); None elsewhere."""
        return self._executor

    async def setup(self, worker: Worker) -> None:
        """Start the executor, wait until its fork server has loaded the data and a
        process has started, and register it as ``worker.executors[name]``."""
        if self.name in worker.executors:
            raise ValueError(f"this Dask worker has an executor named {self.name!r} "
                             "already: give the plugin another name")
        workers = self.max_workers or worker.state.nthreads
        loader = _Loader(self.loader, self.loader_args, _process_environ())

        def new_pool() -> CowProcessPoolExecutor:
            return CowProcessPoolExecutor(workers, loader=loader, **self.executor_options)

        pool = new_pool()
        try:
            await asyncio.wrap_future(pool.submit(_ready))
        except BaseException:
            pool.kill_workers()
            raise
        self._executor = RetryingExecutor(pool, self.retries, rebuild=new_pool)
        self._executor._completed(pool)  # it ran _ready: a pool worth building again
        worker.executors[self.name] = self._executor

    async def teardown(self, worker: Worker) -> None:
        """Unregister the executor and shut it down; every process of it has exited when
        this returns.  The plugin removed from a running worker: queued tasks are
        cancelled (Dask gets a RuntimeError for them) and running ones finish.  The
        worker closing (Dask has cancelled its tasks already): the processes are
        terminated at once (SIGTERM, then SIGKILL half a second later), so that a long
        task does not hold up the close until the nanny kills the worker."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if worker.executors.get(self.name) is executor:
            del worker.executors[self.name]
        if worker.status in (Status.closing, Status.closed, Status.failed):
            await asyncio.to_thread(executor.terminate_workers)
        else:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
