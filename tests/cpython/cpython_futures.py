"""CPython's own ``test_concurrent_futures`` process-pool tests, run against
:class:`cowmp.CowProcessPoolExecutor` with the ``cowfork`` context.

Run from this directory: ``python -m unittest cpython_futures`` (``-v`` names each test and
prints its duration).

CPython builds its process-pool test classes from test mixins (``ExecutorTest``,
``ExecutorDeadlockTest``, ...) and executor mixins (``ProcessPoolForkMixin``, ...: an
``executor_type`` and a context name ``ctx``).  Here the test mixins are combined with
:class:`ProcessPoolCowforkMixin`, whose executor is ``CowProcessPoolExecutor`` and whose
context is ``cowmp.get_context("cowfork")``.  Thread-pool and plain ``Future`` tests are
left out: they do not involve the executor.  The suite is the single module
``test/test_concurrent_futures.py`` on 3.10 and the package of that name from 3.13 on;
3.11 and 3.12 builds often lack it (then one test is skipped, saying so).

``SKIPPED`` lists the tests that cannot pass for a reason other than a bug of cowmp (a
private attribute of the standard executor, a behaviour that differs by design), each
with that reason (``CPYTHON_FUTURES_RUN_SKIPPED=1`` runs them too, to see how they
fail).  ``CHILD_SCRIPT_TESTS`` lists tests that run a fresh interpreter on a script
importing ``executor_type.__name__`` from ``concurrent.futures``: they run with that
import taken from cowmp instead (``_cowmp_child_scripts``).  ``HELPERS`` replaces helper
methods of the test classes that read the standard executor's private attributes.

A test that runs longer than ``CPYTHON_FUTURES_TIMEOUT`` seconds (default 120) has the
stacks of every thread printed and fails with :class:`TestHung` (SIGALRM), so that a
hang cannot block the run.
"""

from __future__ import annotations

import faulthandler
import functools
import importlib
import os
import re
import signal
import sys
import tempfile
import unittest

from test import support

import cowmp

START_METHOD = "cowfork"
TIMEOUT = float(os.environ.get("CPYTHON_FUTURES_TIMEOUT", "120"))
#: set to run the tests of SKIPPED too (to see how they fail)
RUN_SKIPPED = bool(os.environ.get("CPYTHON_FUTURES_RUN_SKIPPED"))

# test mixin -> where it lives in the package layout (3.13+); 3.10 has one module
TEST_MIXINS = {
    "ProcessPoolExecutorTest": "test_process_pool",
    "ExecutorDeadlockTest": "test_deadlock",
    "ProcessPoolShutdownTest": "test_shutdown",
    "WaitTests": "test_wait",
    "AsCompletedTests": "test_as_completed",
    "InitializerMixin": "test_init",
    "FailingInitializerMixin": "test_init",
}

_PROCESSES = (
    "reads the standard executor's private dict of worker processes "
    "``executor._processes`` (CowProcessPoolExecutor has ``worker_pids``)"
)

# test id (class.method) -> why it cannot pass, although cowmp has no bug there
SKIPPED = {
    # -- ProcessPoolExecutorTest ----------------------------------------------------------
    "ProcessPoolCowforkProcessPoolExecutorTest.test_killed_child": (
        _PROCESSES + "; and expects the whole pool to break when one worker is killed, "
        "while by design cowmp fails only that worker's task (WorkerDiedError, a "
        "BrokenProcessPool) and replaces the worker: later submit() calls succeed"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_traceback": (
        "asserts type(exc.__cause__) is the private class "
        "concurrent.futures.process._RemoteTraceback; cowmp attaches its own "
        "cowmp.RemoteTraceback (same ``tb`` attribute with the worker's traceback)"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_saturation": (
        _PROCESSES + ", right after submit(); cowmp's fork server forks the workers in "
        "the background, so none may be up yet then (all are some ms later)"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_idle_process_reuse_one": (
        _PROCESSES + ", and expects workers started on demand (one for three "
        "sequential tasks); cowmp forks all max_workers workers up front"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_idle_process_reuse_multiple": (
        _PROCESSES + ", and expects workers started on demand (at most 3); cowmp forks "
        "all max_workers workers up front"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_max_tasks_per_child": (
        _PROCESSES + " (the test takes the non-'fork' branch, since the method is "
        "named 'cowfork'; cowmp accepts max_tasks_per_child with it, by design)"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest"
    ".test_max_tasks_per_child_defaults_to_spawn_context": (
        "reads the private ``executor._mp_context`` and expects the standard "
        "executor's choice of 'spawn' when max_tasks_per_child is given without a "
        "context; cowmp's default context is cowfork whatever the options, by design"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_python_finalization_error": (
        "mocks threading._start_joinable_thread to fail the standard executor's "
        "second thread (its queue feeder thread), so that its pool breaks before any "
        "task runs; CowProcessPoolExecutor starts a single thread, so its tasks run, "
        "and the test's map(mul, [(2, 3)] * 10) raises mul()'s TypeError (missing y)"
    ),
    # 3.14+
    "ProcessPoolCowforkProcessPoolExecutorTest.test_broken_process_pool_traceback": (
        _PROCESSES + ", and expects the whole pool to break when one worker is killed "
        "(cowmp fails only that worker's task, by design)"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_terminate_workers": (
        "mocks the standard executor's private ``executor._force_shutdown`` and "
        "checks its call with ``concurrent.futures.process._TERMINATE``"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_kill_workers": (
        "mocks the standard executor's private ``executor._force_shutdown`` and "
        "checks its call with ``concurrent.futures.process._KILL``"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_force_shutdown_workers_invalid_op": (
        "calls the standard executor's private ``executor._force_shutdown``"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_force_shutdown_workers": (
        _PROCESSES + ", and mocks terminate()/kill() of a worker's Process object"
    ),
    "ProcessPoolCowforkProcessPoolExecutorTest.test_force_shutdown_workers_stops_pool": (
        _PROCESSES
    ),
    # -- ExecutorDeadlockTest -------------------------------------------------------------
    "ProcessPoolCowforkExecutorDeadlockTest.test_shutdown_deadlock_pickle": (
        "reads the standard executor's private manager thread "
        "``executor._executor_manager_thread`` (to join it at the end)"
    ),
    # -- ProcessPoolShutdownTest ----------------------------------------------------------
    "ProcessPoolCowforkProcessPoolShutdownTest.test_processes_terminate": _PROCESSES,
    # -- FailingInitializerMixin ----------------------------------------------------------
    "ProcessPoolCowforkFailingInitializerTest.test_initializer": (
        "polls the standard executor's private flag ``executor._broken`` (the logging "
        "of 'Exception in initializer:' on the 'concurrent.futures' logger, which it "
        "also checks, is tested in tests/test_executor_faults.py)"
    ),
}

# test ids whose child script imports the executor from concurrent.futures
CHILD_SCRIPT_TESTS = {
    "ProcessPoolCowforkProcessPoolShutdownTest.test_interpreter_shutdown",
    "ProcessPoolCowforkProcessPoolShutdownTest.test_submit_after_interpreter_shutdown",
    "ProcessPoolCowforkProcessPoolShutdownTest.test_hang_gh83386",
}


class TestHung(Exception):
    """A test ran past ``TIMEOUT`` seconds (the stacks of all threads are on stderr)."""


def _import_suite() -> tuple[list, str | None]:
    """The modules holding the test mixins, or ([], why they are missing)."""
    try:
        package = importlib.import_module("test.test_concurrent_futures")
    except ImportError as error:
        return [], (
            f"CPython's test.test_concurrent_futures is not installed with this "
            f"Python {sys.version.split()[0]} ({error}); nothing to run"
        )
    except unittest.SkipTest as skip:
        return [], f"test.test_concurrent_futures skips itself here: {skip}"
    if not hasattr(package, "__path__"):  # 3.10: one module
        return [package], None
    names = ["util", *dict.fromkeys(TEST_MIXINS.values())]
    return [importlib.import_module(f"test.test_concurrent_futures.{n}") for n in names], None


_MODULES, MISSING = _import_suite()

# CPython's regrtest sets test.support.verbose from its own -v (0 without it); the default,
# 1, has every executor test print its duration ("0.02s ") between unittest's dots
support.verbose = int(any(arg in ("-v", "--verbose") for arg in sys.argv[1:]))


def _find(name: str):  # noqa: ANN202
    for module in _MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"no {name} in {[m.__name__ for m in _MODULES]}")


def _on_alarm(signum, frame) -> None:  # noqa: ANN001
    faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
    signal.alarm(max(1, int(TIMEOUT / 2)))  # its cleanup gets another try, then the same
    raise TestHung(f"test still running after {TIMEOUT:g} s (hung?); stacks on stderr")


def _cowmp_child_scripts(method):  # noqa: ANN001, ANN202
    """Run ``method`` with its child script importing the executor from cowmp.

    The script does ``from concurrent.futures import CowProcessPoolExecutor`` (the
    executor's ``__name__``) and then ``get_context('cowfork')`` or
    ``multiprocessing.set_start_method('cowfork')``: that line is replaced by
    ``import multiprocessing, cowmp; from cowmp import CowProcessPoolExecutor``.
    """
    executor_name = cowmp.CowProcessPoolExecutor.__name__
    pattern = re.compile(rf"^([ \t]*)from concurrent\.futures import {executor_name}[ \t]*$",
                         re.M)
    replacement = rf"\1import multiprocessing, cowmp; from cowmp import {executor_name}"

    @functools.wraps(method)
    def wrapper(self):  # noqa: ANN001, ANN202
        module = sys.modules[method.__module__]
        original = module.assert_python_ok

        def assert_python_ok(*args, **kwargs):  # noqa: ANN202
            new_args = [pattern.sub(replacement, a) if isinstance(a, str) else a
                        for a in args]
            self.assertNotEqual(new_args, list(args),
                                f"no import of {executor_name} to rewrite in {args}")
            return original(*new_args, **kwargs)

        module.assert_python_ok = assert_python_ok
        try:
            return method(self)
        finally:
            module.assert_python_ok = original

    return wrapper


def _fail_on_deadlock(self, executor):  # noqa: ANN001, ANN202
    """ExecutorDeadlockTest._fail_on_deadlock, which terminates the processes of the
    private ``executor._processes``: here the workers and the fork server, by pid."""
    with tempfile.TemporaryFile(mode="w+") as f:
        faulthandler.dump_traceback(file=f)
        f.seek(0)
        tb = f.read()
    for pid in [*executor.worker_pids, executor.fork_server_pid]:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    executor.shutdown(wait=True)
    print(f"\nTraceback:\n {tb}", file=sys.__stderr__)
    self.fail(f"Executor deadlock:\n\n{tb}")


# methods of CPython's test classes that are helpers, not tests, replaced as they read
# a private attribute of the standard executor
HELPERS = {"_fail_on_deadlock": _fail_on_deadlock}


if not MISSING:
    _BaseTestCase = _find("BaseTestCase")
    _ProcessPoolForkMixin = _find("ProcessPoolForkMixin")

    class ProcessPoolCowforkMixin(_ProcessPoolForkMixin):
        """CPython's ProcessPoolForkMixin (its checks, any helper a version adds), with
        cowmp's executor and context."""

        executor_type = cowmp.CowProcessPoolExecutor
        ctx = START_METHOD

        def setUp(self) -> None:
            previous = signal.signal(signal.SIGALRM, _on_alarm)
            self.addCleanup(signal.signal, signal.SIGALRM, previous)
            self.addCleanup(signal.alarm, 0)  # runs first: after tearDown
            signal.alarm(max(1, int(TIMEOUT)))
            super().setUp()

        def get_context(self):  # noqa: ANN202
            super().get_context()  # skips the test where fork cannot work (and in TSAN)
            return cowmp.get_context(self.ctx)

    def _strip_mixin(name: str) -> str:  # as util.create_executor_tests names them
        if name.endswith(("Mixin", "Tests")):
            return name[:-5]
        if name.endswith("Test"):
            return name[:-4]
        return name

    def _install(namespace: dict) -> None:
        for mixin_name in TEST_MIXINS:
            mixin = _find(mixin_name)
            name = f"{_strip_mixin(ProcessPoolCowforkMixin.__name__)}{_strip_mixin(mixin_name)}Test"
            helpers = {k: v for k, v in HELPERS.items() if hasattr(mixin, k)}
            cls = type(name, (mixin, ProcessPoolCowforkMixin, _BaseTestCase),
                       {"__module__": namespace["__name__"], **helpers})
            for test_id, reason in () if RUN_SKIPPED else SKIPPED.items():
                class_name, method = test_id.split(".")
                if class_name == name and hasattr(cls, method):
                    setattr(cls, method, unittest.skip(reason)(getattr(cls, method)))
            for test_id in CHILD_SCRIPT_TESTS:
                class_name, method = test_id.split(".")
                if class_name == name and hasattr(cls, method):
                    setattr(cls, method, _cowmp_child_scripts(getattr(cls, method)))
            namespace[name] = cls

    _install(globals())

    def setUpModule() -> None:
        setup = getattr(_MODULES[0], "setup_module", None)  # 3.13+: util.setup_module
        if setup is None:
            setup = _MODULES[0].setUpModule
        setup()

else:

    class NotInstalled(unittest.TestCase):
        def test_cpython_futures_suite(self) -> None:
            self.skipTest(MISSING)

    print(f"cpython_futures: {MISSING}", file=sys.stderr)


if __name__ == "__main__":
    unittest.main(argv=sys.argv)
