"""A soak: two executors, eight threads submitting and mapping at random, a thread
killing their workers, and one executor shut down (cancelling futures) midway.  Every
future ends exactly once, with its result, a BrokenProcessPool (its worker was killed)
or cancelled (the executor shut down); maps give their results in order, then at most
one such error; nothing hangs and no process is left."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import functools
import itertools
import os
import random
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import executor_support as support
import pytest
from conftest import wait_for
from executor_support import alive, all_gone, ready_workers

import cowmp

no_leftovers = support.no_leftovers
make_executor = support.make_executor


def _soak_value(task_id):
    return task_id * 7 + 3


def _soak_task(task_id, seconds):
    time.sleep(seconds)
    return _soak_value(task_id)

SOAK_SECONDS = 20.0
SOAK_SHUTDOWN_AT = 14.0


@pytest.mark.timeout(150)
def test_soak_two_executors_threads_killed_workers_and_a_shutdown(make_executor):
    executors = {"A": make_executor(max_workers=2), "B": make_executor(max_workers=2)}
    for ex in executors.values():
        ready_workers(ex)
    servers = [ex.fork_server_pid for ex in executors.values() if ex.fork_server_pid]
    lock = threading.Lock()
    ids = itertools.count()
    submitted = []  # (id, executor name, future)
    outcomes = collections.defaultdict(list)  # id -> outcomes recorded by callbacks
    maps = []  # {"name", "ids", "values", "error"}
    refused = collections.Counter()
    unexpected = []  # errors of submit/map calls, stuck waits
    seen_pids = set()
    kills = []
    b_shutdown = threading.Event()
    stop = threading.Event()

    def record(task_id, future):
        if future.cancelled():
            outcome = ("cancelled", None)
        elif future.exception() is not None:
            outcome = ("error", future.exception())
        else:
            outcome = ("result", future.result())
        with lock:
            outcomes[task_id].append(outcome)

    def refusal(name, error):
        """Is ``error``, raised by submit or map, a refusal after B's shutdown?"""
        return (name == "B" and b_shutdown.is_set() and isinstance(error, RuntimeError)
                and not isinstance(error, BrokenProcessPool))

    def run_map(r, name, ex):
        task_ids = [next(ids) for _ in range(r.randint(3, 15))]
        delays = [r.uniform(0, 0.02) for _ in task_ids]
        entry = {"name": name, "ids": task_ids, "values": [], "error": None}
        began = time.monotonic()
        try:
            # at most 15 tasks of at most 20 ms: a map that takes 10 s hangs
            results = ex.map(_soak_task, task_ids, delays, chunksize=r.choice([1, 3, None]),
                             timeout=15)
        except BaseException as error:  # noqa: BLE001 - classified
            with lock:
                if refusal(name, error):
                    refused[name] += 1
                else:
                    unexpected.append(("map", name, repr(error)))
            return
        try:
            for value in results:
                entry["values"].append(value)
        except BaseException as error:  # noqa: BLE001 - examined at the end
            entry["error"] = error
        entry["seconds"] = time.monotonic() - began
        with lock:
            maps.append(entry)

    def submitter(seed):
        r = random.Random(seed)
        mine = []
        try:
            while not stop.is_set():
                name = r.choice("AB")
                ex = executors[name]
                if r.random() < 0.08:
                    run_map(r, name, ex)
                    continue
                task_id = next(ids)
                try:
                    future = ex.submit(_soak_task, task_id, r.uniform(0, 0.02))
                except BaseException as error:  # noqa: BLE001 - classified
                    with lock:
                        if refusal(name, error):
                            refused[name] += 1
                        else:
                            unexpected.append(("submit", name, repr(error)))
                    time.sleep(0.001)
                    continue
                with lock:
                    submitted.append((task_id, name, future))
                future.add_done_callback(functools.partial(record, task_id))
                mine.append(future)
                if len(mine) >= 16:  # a few in flight: wait for one (cf.wait does not
                    # see a future cancelled by cancel_futures as done: done() does)
                    deadline = time.monotonic() + 15
                    while not any(f.done() for f in mine):
                        if time.monotonic() > deadline:
                            unexpected.append(("stuck", name, "no future done in 15 s"))
                            return
                        cf.wait(mine, timeout=0.05, return_when=cf.FIRST_COMPLETED)
                    mine = [f for f in mine if not f.done()]
        except BaseException as error:  # noqa: BLE001
            unexpected.append(("thread", seed, repr(error)))

    min_age = 2.0 if cowmp.FALLBACK else 0.3  # kill workers that have started

    def killer():
        r = random.Random(99)
        first_seen = {}
        while not stop.is_set():
            now = time.monotonic()
            candidates = []
            for ex in executors.values():
                for pid in ex.worker_pids:
                    first_seen.setdefault(pid, now)
                    seen_pids.add(pid)
                    if now - first_seen[pid] >= min_age:
                        candidates.append(pid)
            if candidates:
                pid = r.choice(candidates)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            stop.wait(r.uniform(0.1, 0.2))

    threads = [threading.Thread(target=submitter, args=(k,), name=f"soak-submitter-{k}",
                                daemon=True) for k in range(8)]
    threads.append(threading.Thread(target=killer, name="soak-killer", daemon=True))
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        stop.wait(SOAK_SHUTDOWN_AT)
        b_shutdown.set()
        executors["B"].shutdown(wait=False, cancel_futures=True)
        stop.wait(max(0.0, started + SOAK_SECONDS - time.monotonic()))
    finally:
        stop.set()
        ended = time.monotonic()
        for t in threads:
            t.join(max(0.1, ended + 20 - time.monotonic()))
    assert not [t.name for t in threads if t.is_alive()], "soak threads hang"
    slow = [entry for entry in maps if entry["seconds"] > 10]
    assert not slow, slow[:3]
    assert not unexpected, unexpected[:10]
    futures = [future for _, _, future in submitted]
    assert wait_for(lambda: all(f.done() for f in futures), timeout=30), (
        f"{sum(not f.done() for f in futures)} of {len(futures)} futures never completed")
    for ex in executors.values():
        seen_pids.update(ex.worker_pids)
    executors["A"].shutdown(wait=True)

    assert len(kills) >= 10, kills
    assert refused["B"] > 0 and refused["A"] == 0, refused
    results = 0
    for task_id, name, future in submitted:
        assert len(outcomes[task_id]) == 1, (task_id, outcomes[task_id])
        if future.cancelled():
            assert name == "B", (task_id, name)
            continue
        error = future.exception()
        if error is None:
            assert future.result() == _soak_value(task_id), task_id
            results += 1
        else:
            assert isinstance(error, BrokenProcessPool), (task_id, name, repr(error))
    assert results > 200, results
    for entry in maps:
        values, task_ids = entry["values"], entry["ids"]
        assert values == [_soak_value(i) for i in task_ids[:len(values)]], entry
        error = entry["error"]
        if error is None:
            assert len(values) == len(task_ids), entry
        elif isinstance(error, cf.CancelledError):
            assert entry["name"] == "B", entry
        else:
            assert isinstance(error, BrokenProcessPool), entry
    pids = seen_pids | set(servers)
    assert all_gone(pids, timeout=15), alive(pids)
