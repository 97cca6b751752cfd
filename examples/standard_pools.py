"""The standard library's pools on the cowfork start method.

Run: python examples/standard_pools.py
"""

import concurrent.futures
import multiprocessing

import cowmp

WORDS = ["copy", "on", "write"] * 1000


def count_letters(i):
    return len(WORDS[i])  # WORDS is inherited from the parent, not pickled


if __name__ == "__main__":
    ctx = cowmp.get_context("cowfork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as ex:
        print("executor:", sum(ex.map(count_letters, range(len(WORDS)), chunksize=100)))
    with ctx.Pool(2) as pool:
        print("pool:", sum(pool.map(count_letters, range(len(WORDS)), chunksize=100)))
    with multiprocessing.get_context("cowfork").Pool(2) as pool:   # by name, after import
        print("by name:", sum(pool.imap(count_letters, range(10))))
