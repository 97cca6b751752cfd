"""The scheduler's constants, in one place (docs/design.md §10).

Each was measured on the shapes of work of ``benchmarks/bench_shapes.py``; change one,
run that benchmark before and after.
"""

from __future__ import annotations

#: automatic chunking aims at pieces that take about this long in a worker (and no more
#: than a quarter of a worker's share of a map of known length; at the end, a chunk per
#: worker: the end is balanced by taking work back)
CHUNK_SECONDS = 0.05
#: pieces a busy worker may have waiting behind the one it runs (map chunks known to be
#: short only), and at most this many bytes and expected seconds of them
PREFETCH_PIECES = 16
PREFETCH_BYTES = 128 * 1024  # well under a socket's default buffer (208 KiB)
PREFETCH_SECONDS = 1.5 * CHUNK_SECONDS
#: ... and only behind a piece expected to take at most this long (a longer one may hide
#: a slow task, behind which a queued piece would wait)
PREFETCH_BEHIND_SECONDS = 0.002
#: map tasks measured shorter than this run without recording each start (it would cost
#: about as much as the task); a worker crash then reruns that chunk, recorded
UNTRACKED_TASK_SECONDS = 20e-6
#: tasks of a function measured before map trusts the time they take (for prefetching
#: and untracked tasks); until then its chunks grow from one task per worker with the
#: tasks completed, in pieces the first measurements expect to be short
PROBE_TASKS = 8
#: until then, a chunk has at most this many times as many tasks as have completed
PROBE_GROWTH = 4
#: an idle worker takes back a busy one's unstarted tasks if they are two or more and, when
#: their time is known, expected to take at least this long (else the round trip costs
#: more than it saves)
STEAL_MIN_SECONDS = 0.0005
#: tasks read ahead of the results by map, at least (a few chunks per worker otherwise),
#: and at most, beyond those chunks
READ_AHEAD_TASKS = 4096
MAX_READ_AHEAD_TASKS = 1 << 17
#: tasks in an automatic chunk read from an iterator (held in memory until it is sent)
MAX_CHUNK_TASKS = 1 << 15
