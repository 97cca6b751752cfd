"""Load a table once, fork workers that read it: with cowfork they keep sharing it.

``share()`` makes the table immortal on Python 3.12+ (reading it then copies no page);
each worker reports its private memory (USS) after reading its part and collecting.

Run: python examples/share_a_table.py
"""

import gc

import cowmp
from cowmp.memory import private_bytes


def load_table(n):
    return {i: (str(i), [i] * 3) for i in range(n)}


def worker(table, lo, hi, results):
    total = sum(len(table[i][0]) for i in range(lo, hi))  # reads: no copy on 3.12+
    gc.collect()  # the collector skips everything inherited: no page is copied for it
    results.put((total, private_bytes()))


if __name__ == "__main__":
    with cowmp.preload() as loading:     # loaded once, in the parent, then shared
        table = loading.share(load_table(200_000))
    ctx = cowmp.get_context("cowfork")
    results = ctx.Queue()
    step = len(table) // 4
    workers = [ctx.Process(target=worker, args=(table, i * step, (i + 1) * step, results))
               for i in range(4)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=60) for _ in workers]
    total = sum(count for count, _ in reports)
    for w in workers:
        w.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    print("characters in the table's value strings, read by the workers:", total)
    print("private memory per worker:",
          ", ".join(f"{private / 2**20:.1f} MiB" for _, private in reports))
