"""Load a table once, fork workers that read it: with cowfork they keep sharing it.

Run: python examples/share_a_table.py
"""

import gc

import cowmp


def load_table(n):
    return {i: (str(i), [i] * 3) for i in range(n)}


def worker(table, lo, hi, results):
    gc.collect()  # the collector skips everything inherited: no page is copied for it
    results.put(sum(len(table[i][0]) for i in range(lo, hi)))


if __name__ == "__main__":
    table = load_table(200_000)          # loaded once, in the parent
    ctx = cowmp.get_context("cowfork")
    results = ctx.Queue()
    step = len(table) // 4
    workers = [ctx.Process(target=worker, args=(table, i * step, (i + 1) * step, results))
               for i in range(4)]
    for w in workers:
        w.start()
    total = sum(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join()
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    print("characters in the table's keys:", total)
