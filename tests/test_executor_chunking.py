"""How map sizes its chunks, without processes: cowmp.mapping's ChunkPolicy and TaskTimes
(plain values), and the worker's clock that measures the tasks."""

from __future__ import annotations

import os
import time

from cowmp.mapping import ChunkPolicy, TaskTimes
from cowmp.tuning import CHUNK_SECONDS, MAX_CHUNK_TASKS, PROBE_GROWTH
from cowmp.worker import _BusyClock


def test_busy_clock_counts_blocked_time_as_busy():
    clock = _BusyClock()
    try:
        mark = clock.now()
        time.sleep(0.05)  # blocked, not waiting for a CPU: busy
        assert 0.04 <= clock.since(mark) < 5
    finally:
        if clock.fd is not None:
            os.close(clock.fd)


def test_automatic_chunks_aim_at_a_time_and_take_at_most_a_worker_share():
    fast = TaskTimes((1e-7 * 100, 100), evidence=100)  # 0.1 µs a task, trusted
    assert fast.per_task is not None
    total = remaining = 10_300_000
    policy = ChunkPolicy(workers=2, total=total)  # a list: sliced when sent, unbounded
    sizes = []
    while remaining > 0:
        size = min(policy.next_size(fast, completed=0, remaining=remaining), remaining)
        sizes.append(size)
        remaining -= size
    chunk = int(CHUNK_SECONDS / 1e-7)  # the time aimed at
    assert sizes[0] == chunk
    assert sizes == sorted(sizes, reverse=True)
    tail = [size for size in sizes if size != chunk]
    assert tail == [400_000, 400_000], sizes  # the rest: a chunk per worker
    # a quarter of each worker's share, as Pool
    assert ChunkPolicy(workers=2, total=1_001).next_size(fast, 0, 1_001) == 126
    # the rest of a long input: a chunk per worker
    assert ChunkPolicy(workers=2, total=100_000_000).next_size(fast, 0, 1_001) == 501
    iterator = ChunkPolicy(workers=2, in_memory=True)  # chunks wait in memory: bounded
    assert iterator.next_size(fast, 0, None) == MAX_CHUNK_TASKS
    slow = TaskTimes((1.0 * 100, 100), evidence=100)  # long tasks: one per chunk
    assert iterator.next_size(slow, 0, 100) == 1
    assert ChunkPolicy(workers=2, chunksize=7).next_size(slow, 0, 100) == 7
    assert ChunkPolicy(workers=2, max_tasks=3).next_size(fast, 0, None) == 3


def test_probe_chunks_start_at_one_task_and_grow_with_the_tasks_completed():
    """Before the time per task is known, a chunk has one task, then up to four times as
    many as have completed; the first measurements, however few, keep long tasks one per
    chunk."""
    policy = ChunkPolicy(workers=2)
    times = TaskTimes()
    assert policy.next_size(times, completed=0, remaining=1_000_000) == 1
    times.measure(2e-6, 2)  # fast, but too few tasks to trust
    assert times.per_task is None
    assert policy.next_size(times, 2, 1_000_000) == 2 * PROBE_GROWTH
    assert policy.next_size(times, 6, 1_000_000) == 6 * PROBE_GROWTH
    times.measure(7e-6, 7)  # enough tasks now (decayed: 1 + 7): the time is known
    assert times.per_task is not None
    assert policy.next_size(times, 6, 1_000_000) > 6 * PROBE_GROWTH
    slow = TaskTimes()
    slow.measure(0.2, 1)  # one task took 0.2 s: chunks stay at one task
    assert policy.next_size(slow, 50, 1_000) == 1
    # a short rest: each worker's share
    assert ChunkPolicy(workers=2).next_size(TaskTimes(), 50, 3) == 2
