"""CowProcessPoolExecutor.shutdown and the with block: waiting for the work, wait=False,
cancel_futures (a map iterated in another thread included), no new work afterwards, and
a map's input read at shutdown (its results consumed after the with block)."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
import time

import executor_support as support
import pytest
from conftest import wait_for
from executor_support import (
    alive,
    all_gone,
    blocked_in_wait,
    lines,
    mark_and_sleep,
    ready_workers,
    sleep_return,
    square,
)

from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor


def test_context_manager_returns_executor_and_waits_for_pending_work():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert isinstance(ex, CowProcessPoolExecutor)
        futures = [ex.submit(sleep_return, 0.1, i) for i in range(6)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(6))
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)


def test_submit_and_map_after_shutdown_raise_runtime_error():
    ex = CowProcessPoolExecutor(max_workers=2)
    assert ex.submit(square, 3).result(timeout=30) == 9
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1, 2])
    ex.shutdown()  # a second shutdown is harmless


def test_shutdown_without_any_task_stops_the_workers_and_the_fork_server():
    ex = CowProcessPoolExecutor(max_workers=2)
    workers = ex.worker_pids
    assert len(workers) == 2, workers
    pids = [*workers, *filter(None, [ex.fork_server_pid])]
    ex.shutdown(wait=True)
    assert all_gone(pids, timeout=5), alive(pids)


@pytest.mark.timeout(60)
def test_shutdown_cancel_futures_cancels_only_tasks_not_started():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        ready_workers(ex)
        futures = [ex.submit(sleep_return, 0.3, i) for i in range(12)]
        ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.done() for f in futures)
    cancelled = [i for i, f in enumerate(futures) if f.cancelled()]
    finished = [i for i, f in enumerate(futures) if not f.cancelled()]
    # at most two tasks per worker (one running, one prefetched) had started
    assert len(cancelled) >= 12 - 4, (cancelled, finished)
    assert finished == list(range(len(finished)))  # the first ones, in submit order
    assert [futures[i].result() for i in finished] == finished


@pytest.mark.timeout(60)
def test_shutdown_cancelling_futures_lets_idle_workers_start_what_was_submitted():
    # as with the standard executor, whose manager has moved work to its call queue:
    # tasks submitted while workers were idle have begun; only the rest is cancelled
    ex = CowProcessPoolExecutor(max_workers=2)
    assert len(ex.worker_pids) == 2
    futures = [ex.submit(time.sleep, 0.3) for _ in range(10)]
    ex.shutdown(cancel_futures=True)
    begun = [f for f in futures if not f.cancelled()]
    assert len(begun) == 2, [f._state for f in futures]
    assert all(f.done() and f.exception() is None for f in begun)


@pytest.mark.timeout(60)
def test_shutdown_wait_false_returns_before_the_work_is_done_and_the_work_completes():
    ex = CowProcessPoolExecutor(max_workers=2)
    futures = [ex.submit(sleep_return, 0.5, i) for i in range(4)]  # 1 s of work
    ex.shutdown(wait=False)
    assert not all(f.done() for f in futures), "shutdown(wait=False) waited for the work"
    with pytest.raises(RuntimeError):
        ex.submit(square, 1)
    assert [f.result(timeout=30) for f in futures] == [0, 1, 2, 3]
    thread = ex._pool.thread
    thread.join(30)
    assert not thread.is_alive()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["generator", "list", "range"])
def test_map_results_read_after_the_with_block_are_all_there(kind):
    inputs = {"generator": lambda: (i for i in range(50)),
              "list": lambda: list(range(50)),
              "range": lambda: range(50)}
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(square, inputs[kind](), timeout=30)
    assert list(results) == [i * i for i in range(50)]


@pytest.mark.timeout(60)
def test_an_endless_map_left_open_at_shutdown_does_not_hang_it(monkeypatch):
    """At shutdown a map reads the rest of its input, but not without end: past
    MAX_READ_AT_SHUTDOWN tasks the shutdown goes on, and the consumer gets the results
    read, then RuntimeError."""
    from cowmp import mapping, tuning

    monkeypatch.setattr(mapping, "MAX_READ_AT_SHUTDOWN", 500)
    started = time.monotonic()
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(square, itertools.count())
        assert next(results) == 0
    assert time.monotonic() - started < 30, "the shutdown read an endless input"
    got = [0]
    with pytest.raises(RuntimeError, match="input goes on"):
        for value in results:
            got.append(value)
    assert got == [i * i for i in range(len(got))]
    # what was read ahead before the shutdown, then at most 500 more (and a chunk)
    assert 500 <= len(got) < 500 + 2 * tuning.MAX_READ_AHEAD_TASKS


@pytest.mark.timeout(60)
def test_a_long_finite_map_read_at_shutdown_loses_nothing_up_to_the_limit(monkeypatch):
    from cowmp import mapping

    monkeypatch.setattr(mapping, "MAX_READ_AT_SHUTDOWN", 3000)
    with CowProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(square, (i for i in range(2500)))
        assert next(results) == 0
    assert [0, *results] == [i * i for i in range(2500)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chunksize", [None, 1])
@pytest.mark.parametrize("when", ["at_once", "while_running", "workers_busy"])
def test_shutdown_cancelling_futures_ends_a_map_iterated_in_another_thread(
        make_executor, tmp_path, when, chunksize):
    """The map's input that no worker has started (not yet read included) is cancelled:
    its consumer gets the results of what ran, then CancelledError."""
    ex = make_executor(max_workers=2)
    pids = ready_workers(ex)
    marks = tmp_path / "started.txt"
    outcome = {"got": []}
    mapping = threading.Event()
    busy = []
    if when == "workers_busy":  # the map's first chunks wait in the queue, and so does
        # its consumer: for a chunk that the shutdown cancels
        busy_marks = tmp_path / "busy.txt"
        busy = [ex.submit(mark_and_sleep, str(busy_marks), 1.0, i) for i in range(2)]
        assert wait_for(lambda: len(lines(busy_marks)) == 2, timeout=30), "not busy"

    def consume():
        try:
            # bounded (20 s): a consumer left hanging would be a foreign thread for the
            # executors of the tests that follow (the teardown waits for it to end)
            results = ex.map(mark_and_sleep, [str(marks)] * 20, [0.5] * 20, range(20),
                             chunksize=chunksize, timeout=20)
            mapping.set()
            for value in results:
                outcome["got"].append(value)
            outcome["end"] = "finished"
        except BaseException as error:  # noqa: BLE001 - examined by the test
            outcome["end"] = error

    consumer = threading.Thread(target=consume, name="map-consumer", daemon=True)
    consumer.start()
    assert mapping.wait(30), "map() did not return"
    if when == "while_running":
        assert wait_for(lambda: len(lines(marks)) >= 2, timeout=30), "no task started"
    elif when == "workers_busy":
        assert wait_for(lambda: blocked_in_wait(consumer), timeout=30), (
            "the map's consumer is not waiting for its first chunk")
    ex.shutdown(wait=False, cancel_futures=True)
    stopped = time.monotonic()
    consumer.join(10)
    assert not consumer.is_alive(), "the map's consumer hangs after the shutdown"
    assert time.monotonic() - stopped < 10
    assert isinstance(outcome.get("end"), cf.CancelledError), (
        repr(outcome.get("end")), outcome["got"])
    got = outcome["got"]
    assert got == list(range(len(got))) and len(got) < 20, got
    assert len(lines(marks)) < 20
    if when == "workers_busy":
        assert outcome["got"] == []
        assert [f.result(timeout=30) for f in busy] == [0, 1]
    pids |= set(ex.worker_pids)
    assert all_gone(pids, timeout=15), alive(pids)  # the executor stopped its workers


@pytest.mark.timeout(120)
def test_cancelling_at_shutdown_runs_callbacks_without_the_executors_lock(tmp_path):
    """A done-callback of a future cancelled by shutdown(cancel_futures=True) waits for a
    lock that another thread holds while it submits to the same executor: that submit
    must get its error (the executor is shut down), not wait for the shutdown."""
    held = threading.Lock()
    holding, go = threading.Event(), threading.Event()
    outcome = {}
    thread = None

    def submitter():
        with held:
            try:
                ex.submit(square, 1)
            except RuntimeError as error:
                outcome["submit"] = str(error)

    def paused_check():
        """The submitter passes the usability check before the shutdown, then pauses
        there until the callback runs: it next takes the executor's lock."""
        check()
        if threading.current_thread() is thread and not holding.is_set():
            holding.set()
            go.wait(30)

    def callback(future):
        go.set()  # the submitter may go on; this waits for its lock
        outcome["acquired"] = held.acquire(timeout=10)
        if outcome["acquired"]:
            held.release()

    marks = tmp_path / "marks"
    ex = CowProcessPoolExecutor(max_workers=1)
    check = ex._pool.check_usable
    ex._pool.check_usable = paused_check
    try:
        busy = ex.submit(mark_and_sleep, str(marks), 30)
        assert wait_for(lambda: marks.exists(), timeout=30)  # the worker is busy
        queued = ex.submit(square, 2)
        queued.add_done_callback(callback)
        thread = threading.Thread(target=submitter)
        thread.start()
        assert holding.wait(30)
        ex.shutdown(wait=False, cancel_futures=True)
        thread.join(30)
        assert queued.cancelled()
        assert outcome == {"acquired": True,
                           "submit": "cannot schedule new futures after shutdown"}
    finally:
        ex.kill_workers()
    with pytest.raises(cf.process.BrokenProcessPool):
        busy.result(timeout=30)
