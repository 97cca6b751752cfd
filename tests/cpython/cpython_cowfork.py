"""CPython's own multiprocessing test suite, run against the cowfork start method.

Run from this directory (the module must be importable by name, for the suite's spawned
helpers): ``python -m unittest cpython_cowfork``; ``python -m unittest cpython_fork``
runs the same suite under plain ``fork`` for comparison.

A few of CPython's tests branch on the literal start-method name ``"fork"``; each one that
cowfork cannot pass for that reason alone is listed in ``NAME_BRANCHES`` and skipped with
the reason; so is a thread-pool test that stalls now and then under any method
(``NOT_ABOUT_PROCESSES``).
"""

import sys
import unittest
import warnings

import test._test_multiprocessing as suite

import cowmp  # registers "cowfork"

START_METHOD = "cowfork"

# test id (class.method) -> why it fails for cowfork although it passes for fork
NAME_BRANCHES = {
    "WithProcessesTestProcess.test_child_fd_inflation": (
        "skipped for 'fork' by name: a forked child inherits the parent's file descriptors, "
        "cowfork's too, so the count of open fds the test expects (spawn's) does not hold"
    ),
    "TestCloseFds.test_closefd": (
        "expects an open fd in the child only when get_start_method() == 'fork'; cowfork "
        "children inherit fds like fork children"
    ),
    "TestNoForkBomb.test_noforkbomb": (
        "runs a fresh interpreter (python mp_fork_bomb.py cowfork) that calls "
        "set_start_method('cowfork') without importing cowmp, and expects a RuntimeError "
        "from re-importing __main__ for every method except 'fork'"
    ),
    "TestFlags.test_flags": (
        "starts 'python -E -S -c ...' that calls get_context('cowfork') without importing "
        "cowmp; no plain interpreter knows the name"
    ),
    "TestStartMethod.test_get_all_start_methods": (
        "3.14+: asserts that the registered start methods are exactly fork, spawn and "
        "forkserver; importing cowmp registers 'cowfork' (and loky 'loky')"
    ),
}


# test id -> why it is skipped although it does not depend on the start method at all
NOT_ABOUT_PROCESSES = {
    "WithThreadsTestPool.test_terminate": (
        "a thread pool (no process, no start method); on 3.11 and 3.12 it stalls for "
        "about 300 s now and then under 'fork' too, when a thread worker sleeps through "
        "terminate() (3.13's copy of the test shortens the sleep)"
    ),
}


def _skip_name_branches(namespace):
    for test_id, reason in {**NAME_BRANCHES, **NOT_ABOUT_PROCESSES}.items():
        class_name, method = test_id.split(".")
        cls = namespace.get(class_name)
        if cls is not None and hasattr(cls, method):
            setattr(cls, method, unittest.skip(reason)(getattr(cls, method)))


suite.install_tests_in_module_dict(globals(), START_METHOD)
_skip_name_branches(globals())

_suite_set_up = globals()["setUpModule"]  # the suite's, from install_tests_in_module_dict


def setUpModule():
    # CPython's tests fork next to threads on purpose (a manager's server threads, a pool
    # that forks replacements from its own thread, processes started from threads...):
    # they check what multiprocessing does, not cowmp's ForkWithThreadsWarning about
    # those forks (tests/test_threads.py and others check it), nor Python 3.12+'s own
    # DeprecationWarning about the same forks.  Both would print dozens of warnings into
    # a run that passes.  A warning that names one of cowmp's own threads ('cowmp-...')
    # still shows: cowmp holds them at a safe point for its forks.  Filtered here, not at
    # import: unittest's runner sets its own filters after importing this module; the
    # children forked during the run inherit these.
    warnings.filterwarnings(
        "ignore", r"cowmp is forking process \d+ while other threads are running: (?!.*'cowmp-)",
        cowmp.ForkWithThreadsWarning)
    warnings.filterwarnings(
        "ignore", r"This process \(pid=\d+\) is multi-threaded, use of fork\(\)",
        DeprecationWarning)
    _suite_set_up()

if __name__ == "__main__":
    unittest.main(argv=sys.argv)
