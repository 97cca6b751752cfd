"""Worker deaths at every phase fail only the task that caused them, and the executor
replaces the worker: a task that kills its worker while running (signal, exit, segfault;
among many tasks, tiny untracked ones included), a result that kills its worker as it
is pickled, an argument that kills it as it is unpickled, a worker killed while idle, a
process forked by a task; no zombie is left.  And a failure of the manager thread
itself breaks the pool with its cause.

How a death is attributed is unit-tested without processes in test_crash_attribution;
a death in work taken back from another worker is in test_executor_scheduling."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import faulthandler
import itertools
import logging
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import executor_support as support
import pytest
from conftest import requires_fork, wait_for
from executor_support import (
    alive,
    all_gone,
    append_line,
    check_works,
    error_of,
    identity,
    in_worker,
    kill_self,
    lines,
    mark_and_sleep,
    outcome_of,
    ready_workers,
    sleep_return,
    square,
    zombies,
)

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor


# -- tasks that kill their worker (module level: pickled by reference) --------------------


def _exit_3():
    os._exit(3)


def _segfault():
    # Python's report of the crash goes to this worker's stderr, which is the test's
    # (captured) fd 2, where the test checks it; pytest's faulthandler, which a forked
    # worker inherits, would write it to the terminal's stderr instead.
    faulthandler.enable(file=2)
    ctypes.string_at(0)


SEGFAULT_REPORT = "Fatal Python error: Segmentation fault"


def _crash_at(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return x * x


def _record_and_die(path):
    append_line(path, "run")
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


class _DiesWhenPickled:
    """A result that kills the worker pickling it: ``os._exit(1)`` or SIGKILL."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        if not in_worker():
            raise RuntimeError("refusing to kill the test process")
        if self.how == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
        raise RuntimeError("still alive after SIGKILL")


def _deadly_result(path, how):
    append_line(path, "run")
    return _DiesWhenPickled(how)


def _square_or_deadly_result(x, bad, how):
    return _DiesWhenPickled(how) if x == bad else x * x


class _KillsWorkerWhenLoaded:
    """An argument whose unpickling kills the worker (never the test process)."""

    def __reduce__(self):
        return _die_in_child, ()


def _die_in_child():
    if in_worker():
        os._exit(7)
    return "loaded in the parent"


def _fork_a_sleeper_then_die(path):
    pid = os.fork()
    if pid == 0:  # a grandchild of the worker that outlives it
        time.sleep(30)
        os._exit(0)
    append_line(path, pid)
    os._exit(3)


# -- a task that kills its worker while it runs ---------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("task,exitcode,text", [
    (kill_self, -signal.SIGKILL, "SIGKILL"),
    (_exit_3, 3, "exit code 3"),
    (_segfault, -signal.SIGSEGV, "SIGSEGV"),
])
def test_a_dying_worker_fails_only_its_task(task, exitcode, text, capfd):
    with CowProcessPoolExecutor(max_workers=2) as ex:
        before = ready_workers(ex)
        others = [ex.submit(sleep_return, 0.02, i) for i in range(5)]
        doomed = ex.submit(task)
        more = [ex.submit(sleep_return, 0.02, i) for i in range(5, 10)]
        error = doomed.exception(timeout=30)
        assert isinstance(error, cowmp.WorkerDiedError), repr(error)
        assert isinstance(error, BrokenProcessPool)
        assert text in str(error)
        assert error.exitcode == exitcode
        assert error.pid in before
        assert [f.result(timeout=30) for f in others + more] == list(range(10))
        assert ex.submit(square, 8).result(timeout=30) == 64
        after = wait_for(lambda: len(ex.worker_pids) == 2 and set(ex.worker_pids))
        assert after and error.pid not in after
    # the worker's stderr is the test's: a segfault's report (naming the task) reaches it
    err = capfd.readouterr().err
    if task is _segfault:
        assert SEGFAULT_REPORT in err and "in _segfault" in err, err
    else:
        assert SEGFAULT_REPORT not in err, err


@pytest.mark.timeout(60)
def test_a_task_that_kills_its_worker_while_running_fails_at_its_first_death(
        make_executor, tmp_path):
    ex = make_executor(max_workers=2)
    ready_workers(ex)
    runs = tmp_path / "runs.txt"
    started = time.monotonic()
    error = error_of(ex.submit(_record_and_die, str(runs)), timeout=30)
    assert isinstance(error, cowmp.WorkerDiedError), repr(error)
    assert time.monotonic() - started < 10
    check_works(ex)
    assert lines(runs) == ["run"]


@pytest.mark.timeout(60)
def test_crash_in_the_middle_of_a_long_map_raises_at_that_item():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        got = []
        with pytest.raises(cowmp.WorkerDiedError, match="SIGKILL") as info:
            for value in ex.map(_crash_at, range(2000), itertools.repeat(777)):
                got.append(value)
        assert got == [i * i for i in range(777)]
        assert "777" in str(info.value)
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]


@pytest.mark.timeout(60)
def test_crash_among_tiny_tasks_of_a_list_fails_exactly_that_task():
    """Tiny tasks run untracked, their pieces are prefetched in batches and their
    outcomes held back: a crash still fails that task alone and loses no result."""
    bad = 31_337
    with CowProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(square, range(10_000)))  # measured short: the next map goes fast
        got = []
        with pytest.raises(cowmp.WorkerDiedError, match="SIGKILL") as info:
            for value in ex.map(_crash_at, range(60_000), [bad] * 60_000):
                got.append(value)
        assert got == [i * i for i in range(bad)]
        assert str(bad) in str(info.value)
        futures = [ex.submit(_crash_at, i, bad) for i in range(bad - 2, bad + 3)]
        assert [f.exception(timeout=30) is not None for f in futures] == [
            False, False, True, False, False]


@pytest.mark.timeout(60)
def test_crash_among_many_submitted_tasks_fails_exactly_that_task():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_crash_at, i, 777) for i in range(2000)]
        done, not_done = cf.wait(futures, timeout=50)
        assert not not_done
        assert isinstance(futures[777].exception(), cowmp.WorkerDiedError)
        for i, f in enumerate(futures):
            if i != 777:
                assert f.result() == i * i, i


@pytest.mark.timeout(60)
def test_several_crashes_among_submitted_tasks_fail_exactly_those_tasks():
    # every task whose number is a multiple of 250 kills its worker
    with CowProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_crash_at, i, 250 * (i // 250)) for i in range(1, 1000)]
        cf.wait(futures, timeout=50)
        failed = [i + 1 for i, f in enumerate(futures) if f.exception() is not None]
        assert failed == [250, 500, 750]
        assert all(f.result() == (i + 1) ** 2 for i, f in enumerate(futures)
                   if i + 1 not in failed)


@pytest.mark.timeout(60)
def test_repeated_crashes_are_each_reported_promptly_and_leave_no_zombie():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        for attempt in range(8):
            started = time.monotonic()
            error = ex.submit(kill_self).exception(timeout=30)
            elapsed = time.monotonic() - started
            assert isinstance(error, cowmp.WorkerDiedError)
            assert "SIGKILL" in str(error), (attempt, str(error), f"{elapsed:.2f} s")
            # promptly: not after waiting for an exit status that never comes (5 s)
            assert elapsed < 4, (attempt, str(error), f"{elapsed:.2f} s")
            assert wait_for(lambda: not zombies(), timeout=2), (attempt, zombies())
        assert ex.submit(square, 2).result(timeout=30) == 4


@pytest.mark.timeout(60)
def test_no_zombies_after_crashes_timeouts_and_retirements(capfd):
    with CowProcessPoolExecutor(max_workers=2, max_tasks_per_child=4) as ex:
        for task in (kill_self, _exit_3, _segfault):
            assert isinstance(ex.submit(task).exception(timeout=30), cowmp.WorkerDiedError)
        late = ex.schedule(sleep_return, (20,), timeout=0.3)
        assert isinstance(late.exception(timeout=30), TimeoutError)
        assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(10)]] \
            == [i * i for i in range(10)]
        assert wait_for(lambda: not zombies(), timeout=3), zombies()
        assert ex.submit(square, 2).result(timeout=30) == 4
    assert capfd.readouterr().err.count(SEGFAULT_REPORT) == 1


# -- a worker that dies at another moment -----------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_killed_while_idle_is_replaced_and_nothing_fails():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        before = ready_workers(ex)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        after = wait_for(lambda: len(ex.worker_pids) == 2 and victim not in ex.worker_pids
                          and set(ex.worker_pids))
        assert after, ex.worker_pids
        assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(20)]] \
            == [i * i for i in range(20)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_result_that_kills_its_worker_when_pickled_fails_and_runs_at_most_twice(
        make_executor, tmp_path, how):
    ex = make_executor(max_workers=2)
    runs = tmp_path / "runs.txt"
    started = time.monotonic()
    error = error_of(ex.submit(_deadly_result, str(runs), how), timeout=30)
    assert isinstance(error, cowmp.WorkerDiedError), repr(error)
    assert isinstance(error, BrokenProcessPool)
    assert time.monotonic() - started < 30
    check_works(ex)
    assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(10)]] == [
        i * i for i in range(10)]
    # a task in flight at two worker deaths fails instead of running a third time
    assert 1 <= len(lines(runs)) <= 2, lines(runs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_a_deadly_result_in_a_map_chunk_fails_that_item_after_the_others(make_executor, how):
    ex = make_executor(max_workers=2)
    got = []
    results = ex.map(_square_or_deadly_result, range(10), [9] * 10, [how] * 10,
                     chunksize=10, timeout=30)
    with pytest.raises(cowmp.WorkerDiedError):
        for value in results:
            got.append(value)
    assert got == [i * i for i in range(9)]
    check_works(ex)


@requires_fork
@pytest.mark.timeout(60)
def test_an_argument_that_kills_its_worker_when_unpickled_fails_after_two_deaths_alone(
        make_executor):
    ex = make_executor(max_workers=2)
    items = [1, 2, _KillsWorkerWhenLoaded(), 4, 5]
    got = []
    with pytest.raises(cowmp.WorkerDiedError, match="exit code 7") as info:
        for value in ex.map(identity, items, chunksize=5):
            got.append(value)
    assert got == [1, 2]
    assert "reading" in str(info.value)
    # the others of the chunk ran again and succeed; the pool still works
    assert [f.result(timeout=30) for f in [ex.submit(identity, i) for i in (4, 5)]] == [4, 5]
    futures = [ex.submit(identity, v) for v in items]
    outcomes = [outcome_of(f, 30) for f in futures]
    assert [o[1] for o in outcomes if o[0] == "result"] == [1, 2, 4, 5]
    assert isinstance(outcomes[2][1], cowmp.WorkerDiedError)


@requires_fork
@pytest.mark.timeout(60)
def test_a_process_forked_by_a_task_does_not_keep_its_dead_worker_alive(make_executor,
                                                                       tmp_path):
    """The worker's connection is closed in processes its tasks fork: its death is seen
    when it dies, not when the grandchild ends."""
    ex = make_executor(max_workers=2)
    ready_workers(ex)
    marks = tmp_path / "grandchild.txt"
    started = time.monotonic()
    future = ex.submit(_fork_a_sleeper_then_die, str(marks))
    try:
        error = error_of(future, 20)
        assert isinstance(error, cowmp.WorkerDiedError), error
        assert time.monotonic() - started < 10
        assert ex.submit(square, 3).result(timeout=30) == 9
    finally:
        for line in lines(marks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)


# -- the manager thread fails ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_failure_of_the_manager_thread_breaks_the_pool_with_its_cause_and_logs_it(
        monkeypatch, caplog, tmp_path):
    """A bug in the manager thread must still end every future: BrokenProcessPool with
    the original error as __cause__, and the traceback logged."""
    from cowmp import pool_manager

    armed = threading.Event()
    check_memory = pool_manager.Pool.check_memory

    def broken(self):
        if armed.is_set():
            raise ZeroDivisionError("a bug in the manager")
        check_memory(self)

    monkeypatch.setattr(pool_manager.Pool, "check_memory", broken)
    ex = CowProcessPoolExecutor(2)
    pids = ready_workers(ex)
    marks = tmp_path / "started.txt"
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        futures = [ex.submit(mark_and_sleep, str(marks), 30, i) for i in range(4)]
        assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), "no task started"
        armed.set()
        futures.append(ex.submit(square, 2))  # wakes the manager: its round fails
        errors = [error_of(f, 20) for f in futures]
    assert all(isinstance(e, BrokenProcessPool) for e in errors), errors
    assert all_gone(pids, timeout=5), alive(pids)  # their tasks had failed already
    assert isinstance(errors[0].__cause__, ZeroDivisionError), errors[0].__cause__
    assert "a bug in the manager" in caplog.text
    assert "Traceback" in caplog.text or caplog.records[0].exc_info
    with pytest.raises(BrokenProcessPool):
        ex.submit(square, 1)
    ex.shutdown()
