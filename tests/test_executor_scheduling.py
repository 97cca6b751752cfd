"""How the executor hands work out: one task per worker first, work taken back from a busy
worker by an idle one, nothing waiting behind a task that runs late (nor a short task
behind a long one while a worker is idle), workers started with the executor.  Behaviour
only: whether the work ends up on the right worker, never how long it took (speed is for
benchmarks/bench_shapes.py)."""

from __future__ import annotations

import os
import socket
import time
from multiprocessing import sharedctypes
from multiprocessing.connection import Connection

import executor_support as support
import psutil
import pytest
from conftest import requires_fork, wait_for
from executor_support import idle, ready_workers, sleep_return

import cowmp
from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers

#: set in the workers by an initializer
EVENT = None


def nap_pid(seconds, x):
    time.sleep(seconds)
    return x, os.getpid()


def slow_head(x):
    """Tasks 0 to 9 take 0.1 s, the others 1 ms."""
    time.sleep(0.1 if x < 10 else 0.001)
    return os.getpid()


def waits_for_the_last(count, x):
    """Task 0 waits until the last task has run; the others take 5 ms."""
    if x == 0:
        if not EVENT.wait(60):
            raise RuntimeError("the last task never ran while task 0 waited")
    else:
        time.sleep(0.005)
        if x == count - 1:
            EVENT.set()
    return x


@pytest.mark.timeout(60)
def test_the_first_tasks_of_a_map_go_one_per_worker():
    import functools

    with CowProcessPoolExecutor(max_workers=4) as ex:
        done = list(ex.map(functools.partial(nap_pid, 0.2), range(8)))
    assert [x for x, _ in done] == list(range(8))
    first = [pid for _, pid in done[:4]]
    assert len(set(first)) == 4, first  # not two of them queued on one worker


@pytest.mark.timeout(60)
def test_an_idle_worker_takes_back_the_unstarted_tasks_of_a_busy_one():
    # two chunks of ten: the second (1 ms tasks) is done long before the first (0.1 s
    # tasks) has run two; the worker left idle takes back what the other has not begun
    import functools

    with CowProcessPoolExecutor(max_workers=2) as ex:
        # both workers up first (a spawned one takes a while): then the first chunk
        # cannot be half done before the other worker exists
        assert len({pid for _, pid in ex.map(functools.partial(nap_pid, 0.3), range(2))}) == 2
        pids = list(ex.map(slow_head, range(20), chunksize=10))
    slow, fast = pids[:10], pids[10:]
    assert len(set(fast)) == 1
    assert fast[0] in slow[1:], pids  # some of the slow chunk ran on the other worker
    assert slow[0] != fast[0]


def _set_event(event):
    global EVENT
    EVENT = event


@pytest.mark.timeout(120)
def test_nothing_waits_behind_a_task_that_runs_far_longer_than_the_others():
    # task 0 blocks until the last task has run: a task queued behind it on its worker
    # (prefetched) would never run, and the map would hang
    import functools

    event = cowmp.get_context("cowfork").Event()
    with CowProcessPoolExecutor(max_workers=2, initializer=_set_event,
                                initargs=(event,)) as ex:
        results = list(ex.map(functools.partial(waits_for_the_last, 300), range(300),
                              timeout=60))
    assert results == list(range(300))


@pytest.mark.timeout(60)
def test_a_short_task_does_not_wait_behind_a_long_one_while_a_worker_is_idle():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        ready_workers(ex)
        assert wait_for(lambda: idle(ex), timeout=10), "the workers are not idle"
        long = ex.submit(sleep_return, 2.0, "long")
        medium = ex.submit(sleep_return, 0.2, "medium")
        short = ex.submit(sleep_return, 0.01, "short")
        assert short.result(timeout=30) == "short"
        # the stdlib's executor runs it on the worker that finished "medium": ~0.2 s;
        # behind "long" it would have ended after it
        assert not long.done(), "the short task waited behind the long one"
        assert medium.result(timeout=30) == "medium"
        assert long.result(timeout=30) == "long"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["cowfork", "spawn"])
def test_workers_start_with_the_executor_and_are_listed(method):
    ctx = None if method == "cowfork" else cowmp.get_context("spawn")
    with CowProcessPoolExecutor(max_workers=3, mp_context=ctx) as ex:
        pids = ex.worker_pids  # no task submitted yet
        assert len(pids) == 3 and len(set(pids)) == 3
        assert all(psutil.pid_exists(pid) for pid in pids)
        assert wait_for(lambda: all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                                    for pid in pids))
        assert sorted(ex.worker_pids) == sorted(pids)


# --- the worker's side of taking work back ----------------------------------------------

def _ran(x):
    time.sleep(0.05)
    return x


@pytest.fixture
def bare_worker():
    """A worker loop in a forked child, its slot, and the parent's end of its socket."""
    from cowmp import serialize, slots, worker
    from cowmp.channel import Channel

    progress = sharedctypes.RawArray("d", slots.SLOT_FIELDS)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            ours.close()
            worker._serve(Channel(Connection(theirs.detach())),
                          slots.Writer(memoryview(progress).cast("B").cast("d"), 0), None,
                          serialize.Snapshot.take(by_reference=True))
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    channel = Channel(Connection(ours.detach()))
    try:
        yield channel, progress
    finally:
        channel.close()
        os.waitpid(pid, 0)


def _piece(piece_id, count, fn=_ran, flags=None):
    from cowmp import serialize, worker

    snapshot = serialize.Snapshot.take(by_reference=True)
    fn = serialize.dumps(fn, snapshot, "the function")
    tasks, _ = serialize.pack_list(list(range(count)), snapshot)
    flags = worker.TRACKED if flags is None else flags
    return [worker.HEADER.pack(piece_id, count, flags, len(fn), 0), fn, tasks]


def _long(x):
    time.sleep(3)
    return x


def _outcomes(channel, pieces):
    from cowmp import worker

    found = []
    while len(found) < pieces:
        for data in channel.receive():
            _, piece_id, count, *_ = worker.DONE.unpack_from(data)
            found.append((piece_id, count))
    return found


@requires_fork
@pytest.mark.timeout(60)
def test_a_worker_stops_before_its_next_task_and_returns_the_pieces_behind(bare_worker):
    from cowmp import slots

    channel, progress = bare_worker
    channel.send([_piece(101, 10), _piece(102, 3), _piece(103, 2)])
    assert wait_for(lambda: progress[0] == 101 and progress[1] >= 1)  # task 1 running
    progress[slots.YIELD] = 101
    outcomes = _outcomes(channel, 3)
    (first, ran), *rest = outcomes
    assert first == 101 and 2 <= ran < 10, outcomes  # stopped before a later task
    assert rest == [(102, 0), (103, 0)]  # never begun: all given back
    assert slots.sent_count(int(progress[1])) is not None


@requires_fork
@pytest.mark.timeout(60)
def test_a_piece_asked_back_before_it_begins_is_returned_whole(bare_worker):
    from cowmp import slots

    channel, progress = bare_worker
    progress[slots.YIELD] = 201
    channel.send([_piece(201, 4), _piece(202, 4)])
    assert _outcomes(channel, 2) == [(201, 0), (202, 0)]
    progress[slots.YIELD] = 0
    channel.send([_piece(203, 2)])
    assert _outcomes(channel, 1) == [(203, 2)]  # and it goes on working


def slow_head_dies_at(x):
    """As :func:`slow_head`; task 5 (taken back from the first worker) kills its worker."""
    if x == 5:
        os._exit(3)
    return slow_head(x)


@pytest.mark.timeout(60)
def test_work_taken_back_then_fatal_fails_only_its_task():
    with CowProcessPoolExecutor(max_workers=2) as ex:
        futures = ex.map(slow_head_dies_at, range(20), chunksize=10)
        got = []
        with pytest.raises(cowmp.WorkerDiedError, match="exit code 3"):
            for pid in futures:
                got.append(pid)
        assert len(got) == 5  # tasks 0 to 4, then task 5's error
        # the pool goes on
        assert list(ex.map(slow_head, range(12, 16))) and len(ex.worker_pids) == 2


@pytest.mark.timeout(120)
def test_taking_work_back_loses_and_repeats_nothing(tmp_path):
    # tasks of uneven length on three workers, with explicit and automatic chunks, a
    # submit stream beside them: every task runs exactly once (a mark per run)
    import functools

    marks = tmp_path / "marks"
    marks.mkdir()
    with CowProcessPoolExecutor(max_workers=3) as ex:
        side = [ex.submit(_marked, str(marks), 10_000 + i, 0.002) for i in range(30)]
        first = list(ex.map(functools.partial(_marked, str(marks)), range(300),
                            [0.03 if x % 37 == 0 else 0.0005 for x in range(300)],
                            chunksize=40))
        second = list(ex.map(functools.partial(_marked, str(marks)), range(300, 700),
                             [0.05 if x % 101 == 0 else 0.0002 for x in range(400)]))
        assert [f.result() for f in side] == [10_000 + i for i in range(30)]
    assert first == list(range(300)) and second == list(range(300, 700))
    names = sorted(int(name) for name in os.listdir(marks))
    assert names == sorted([*range(700), *range(10_000, 10_030)])  # once each


def _marked(directory, x, seconds):
    path = os.path.join(directory, str(x))
    with open(path, "x"):  # a second run of the same task would fail here
        pass
    time.sleep(seconds)
    return x


@requires_fork
@pytest.mark.timeout(60)
@pytest.mark.parametrize("short", [False, True])
def test_outcomes_held_back_wait_only_for_pieces_known_to_be_short(bare_worker, short):
    # a tiny piece, then one that runs 3 s: the tiny one's outcome is not held back for
    # the long one (unless the parent said it would be short, which it was not)
    from cowmp import worker

    channel, _ = bare_worker
    tiny = worker.SHORT if short else 0
    started = time.monotonic()
    channel.send([_piece(301, 1, fn=str, flags=tiny), _piece(302, 1, fn=_long, flags=tiny)])
    first = _outcomes(channel, 1)
    waited = time.monotonic() - started
    if short:  # held back, as it was told it could be: both come together
        assert first == [(301, 1), (302, 1)] and waited >= 2.5
    else:  # sent before the long piece began
        assert first == [(301, 1)] and waited < 2.5
        assert _outcomes(channel, 1) == [(302, 1)]
