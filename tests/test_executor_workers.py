"""Who a worker is and how long it lives: replaced after max_tasks_per_child tasks (a map
chunk counts its tasks), named as a pool worker with the test process as its parent, and
reporting the executor's start method."""

from __future__ import annotations

import collections
import io
import logging
import multiprocessing
import os
import re

import executor_support as support
import pytest
from conftest import requires_fork
from executor_support import ready_workers, square

from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor


def _pid_square(x):
    return os.getpid(), x * x


def _worker_identity():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(processName)s"))
    logger = logging.getLogger("cowmp.tests.workers.identity")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info("hello")
    finally:
        logger.removeHandler(handler)
    parent = multiprocessing.parent_process()
    return {
        "name": multiprocessing.current_process().name,
        "logged": stream.getvalue().strip(),
        "parent": None if parent is None else parent.pid,
        "pid": os.getpid(),
    }


def _start_method():
    return multiprocessing.get_start_method(allow_none=True)


# -- max_tasks_per_child --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_workers():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=3) as ex:
        results = [f.result(timeout=30) for f in [ex.submit(_pid_square, i)
                                                  for i in range(12)]]
    assert [value for _, value in results] == [i * i for i in range(12)]
    per_pid = collections.Counter(pid for pid, _ in results)
    assert len(per_pid) >= 4, per_pid
    assert max(per_pid.values()) <= 3, per_pid


@pytest.mark.timeout(60)
def test_max_tasks_per_child_with_map_results_correct_and_pids_change():
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=10) as ex:
        results = list(ex.map(_pid_square, range(40)))
    assert [value for _, value in results] == [i * i for i in range(40)]
    assert len({pid for pid, _ in results}) >= 4


@pytest.mark.timeout(60)
def test_max_tasks_per_child_bounds_the_tasks_of_a_worker_in_a_map():
    # the executor counts a map chunk as its tasks (not as one task, as the stdlib does)
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=10) as ex:
        results = list(ex.map(_pid_square, range(40), chunksize=4))
    assert [value for _, value in results] == [i * i for i in range(40)]
    per_pid = collections.Counter(pid for pid, _ in results)
    assert max(per_pid.values()) <= 10, sorted(per_pid.values())


# -- who a worker is ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_is_named_as_a_pool_worker_with_the_test_process_as_parent(make_executor):
    ex = make_executor(max_workers=2)
    ready_workers(ex)
    futures = [ex.submit(_worker_identity) for _ in range(6)]
    identities = [f.result(timeout=30) for f in futures]
    for identity in identities:
        assert re.fullmatch(r"CowPoolWorker-\d+", identity["name"]), identity
        assert identity["logged"] == identity["name"], identity
        assert identity["parent"] == os.getpid(), identity
        assert identity["pid"] != os.getpid()


@requires_fork
@pytest.mark.timeout(60)
def test_a_worker_reports_the_cowfork_start_method(make_executor):
    ex = make_executor(max_workers=2)
    assert ex.submit(_start_method).result(timeout=30) == "cowfork"


def _nested_executor(values):
    """A task that runs an executor of its own (the worker holds no lock of its
    parent's fork server: its manager thread can open and close handles)."""
    with CowProcessPoolExecutor(max_workers=1) as inner:
        return list(inner.map(square, values))


@pytest.mark.timeout(120)
def test_a_task_can_run_an_executor_of_its_own():
    """Forked workers can; spawned ones (the fallback) are daemonic multiprocessing
    processes, which may not start children: the task fails with multiprocessing's
    error, as under the standard ProcessPoolExecutor, and nothing hangs."""
    import cowmp

    with CowProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_nested_executor, [i, i + 1]) for i in range(3)]
        if cowmp.FALLBACK:
            for future in futures:
                with pytest.raises(AssertionError, match="daemonic processes"):
                    future.result(timeout=60)
        else:
            assert [f.result(timeout=60) for f in futures] == [
                [i * i, (i + 1) * (i + 1)] for i in range(3)]
