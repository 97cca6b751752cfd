"""Executors next to each other and next to threads: a new executor right after the
previous one (shut down without waiting, dropped, rebound), next to one that a thread
keeps busy replacing its workers, next to a running one (no warning about cowmp's own
threads), next to a foreign thread (a warning naming it), and while a done-callback
blocks the other's manager thread.  The long randomized run is test_executor_soak."""

from __future__ import annotations

import contextlib
import gc
import itertools
import re
import threading
import time
import warnings

import executor_support as support
import pytest
from conftest import forks_next_to_threads, requires_fork
from executor_support import check_works, square

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor

ROUNDS = 8 if cowmp.FALLBACK else 34


@contextlib.contextmanager
def _warnings_only_about(*threads):
    """Executors created inside may warn (ForkWithThreadsWarning) about ``threads``, the
    test's own threads, foreign to cowmp; about no other thread (not cowmp's own)."""
    allowed = {t.name for t in threads}
    alive_before = {t.name for t in threading.enumerate()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", cowmp.ForkWithThreadsWarning)
        yield
    others = (alive_before | {t.name for t in threading.enumerate()}) - allowed - {
        threading.current_thread().name}
    for w in caught:
        if not issubclass(w.category, cowmp.ForkWithThreadsWarning):
            continue
        message = str(w.message)
        assert not [name for name in others if repr(name) in message], message
        assert not re.search(r"'cowmp[^']*'", message), message  # a thread of cowmp's
        assert "not started through threading" not in message, message


@contextlib.contextmanager
def _kept_busy(ex):
    """A thread keeps ``ex`` busy with squares (a few in flight at a time) while the block
    runs; afterwards every one of its futures has the right result."""
    stop = threading.Event()
    submitted = []
    errors = []

    def stream():
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                future = ex.submit(square, i)
                submitted.append((i, future))
                if i % 4 == 3:
                    future.result(timeout=30)
        except BaseException as error:  # noqa: BLE001 - examined by the test
            errors.append(error)

    submitter = threading.Thread(target=stream, name="fault-submitter", daemon=True)
    submitter.start()
    try:
        yield submitter
    finally:
        stop.set()
        submitter.join(60)
    assert not submitter.is_alive(), "the submitting thread hangs"
    assert not errors, errors
    assert submitted, "nothing was submitted"
    for i, future in submitted:
        assert future.result(timeout=30) == i * i, i


@pytest.mark.timeout(180)
@pytest.mark.parametrize("previous", ["shutdown_wait_false", "dropped", "rebound"])
def test_a_new_executor_works_right_after_the_previous_one(previous):
    executors = []  # those shut down: kept, to stop them at the end
    ex = None
    try:
        for _ in range(ROUNDS):
            # "rebound": the previous one, still bound to ex, is dropped by this assignment
            ex = CowProcessPoolExecutor(max_workers=2)
            check_works(ex)
            if previous == "shutdown_wait_false":
                ex.shutdown(wait=False)
                executors.append(ex)
            elif previous == "dropped":
                del ex
                gc.collect()
                ex = None
    finally:
        if ex is not None:
            ex.shutdown(wait=False)
        del ex
        for old in executors:
            old.shutdown(wait=False)
        executors.clear()
        gc.collect()


@pytest.mark.timeout(180)
def test_a_new_executor_works_while_another_replaces_its_workers(make_executor):
    busy = make_executor(max_workers=2, max_tasks_per_child=1)
    check_works(busy)
    with _kept_busy(busy) as submitter:
        for _ in range(ROUNDS):
            with _warnings_only_about(submitter):
                ex = make_executor(max_workers=2)
            check_works(ex)
            ex.shutdown(wait=False)
            del ex


@pytest.mark.timeout(180)
def test_an_executor_created_and_shut_down_in_a_loop_next_to_a_busy_one(make_executor):
    rounds = 10 if cowmp.FALLBACK else 100
    a = make_executor(max_workers=2, max_tasks_per_child=1)
    check_works(a)
    with _kept_busy(a) as submitter:
        for r in range(rounds):
            with _warnings_only_about(submitter):
                b = make_executor(max_workers=2)
            futures = [b.submit(square, r * 10 + k) for k in range(3)]
            assert [f.result(timeout=30) for f in futures] == [
                (r * 10 + k) ** 2 for k in range(3)]
            b.shutdown(wait=True)
            del b


@pytest.mark.timeout(120)
def test_an_executor_created_next_to_a_running_one_does_not_warn(make_executor):
    for _ in range(5):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            first = make_executor(max_workers=2)
            check_works(first)  # its manager thread runs
            second = make_executor(max_workers=2)
            check_works(second)
            first.shutdown(wait=True)
            second.shutdown(wait=True)


@requires_fork
@forks_next_to_threads
@pytest.mark.timeout(60)
def test_an_executor_created_next_to_a_foreign_thread_warns_naming_it(make_executor):
    release = threading.Event()
    sleeper = threading.Thread(target=release.wait, name="foreign-sleeper", daemon=True)
    sleeper.start()
    try:
        with pytest.warns(cowmp.ForkWithThreadsWarning, match="foreign-sleeper"):
            ex = make_executor(max_workers=2)
    finally:
        release.set()
        sleeper.join(10)
    assert not sleeper.is_alive()
    check_works(ex)


@requires_fork
@forks_next_to_threads
@pytest.mark.timeout(60)
def test_a_done_callback_that_blocks_does_not_deadlock_the_next_executor(make_executor,
                                                                        monkeypatch):
    """A done-callback runs in the manager thread.  If it waits for the thread that is
    creating another executor, the fork cannot wait for the manager to be at a safe
    point: after a bounded wait it forks all the same, and warns naming the thread."""
    from cowmp import forking

    monkeypatch.setattr(forking, "QUIESCE_TIMEOUT", 0.5)
    ex = make_executor(max_workers=2)
    in_callback = threading.Event()
    release = threading.Event()

    def blocking_callback(_future):
        in_callback.set()
        release.wait(30)

    future = ex.submit(square, 3)
    future.add_done_callback(blocking_callback)
    try:
        assert in_callback.wait(30), "the callback never ran"
        started = time.monotonic()
        with pytest.warns(cowmp.ForkWithThreadsWarning, match="cowmp-executor"):
            other = make_executor(max_workers=2)
        assert time.monotonic() - started < 10
        assert other.submit(square, 4).result(timeout=30) == 16
    finally:
        release.set()
    assert future.result(timeout=30) == 9
    assert ex.submit(square, 5).result(timeout=30) == 25
