"""Three ways to give CowProcessPoolExecutor's workers a large object without sending it.

1. A module global loaded before the executor is created: the workers inherit it, and
   a module-level function that reads it travels by name.
2. ``initializer``: runs in every worker (replacements too) to set up per-worker state
   from what the worker inherited (here: an index built over the shared table; where
   fork is missing, workers are spawned, inherit nothing, and the initializer loads it).
3. ``cowmp.share(obj)``: the object may then be captured by a closure or passed as an
   argument; it travels by reference, a few bytes, however large it is.

Run: python examples/executor_patterns.py
"""

import cowmp

SIZE = 300_000
TABLE = None        # pattern 1: filled in before the executor is created
_index = None       # pattern 2: per-worker state, made by the initializer


def load(n):
    return [(i, str(i)) for i in range(n)]


def lookup_global(i):
    return TABLE[i][1]                       # reads the inherited module global


def build_index():
    global TABLE, _index
    if TABLE is None:  # a spawned worker (where fork is missing) inherits nothing
        TABLE = load(SIZE)
    _index = {text: i for i, text in TABLE}  # built once per worker, from inherited data


def lookup_index(text):
    return _index[text]


if __name__ == "__main__":
    TABLE = load(SIZE)
    rows = cowmp.share(load(SIZE))        # pattern 3: registered before the executor

    with cowmp.CowProcessPoolExecutor(max_workers=2, initializer=build_index) as ex:
        print(list(ex.map(lookup_global, [1, 10, 100])))          # ['1', '10', '100']
        print(list(ex.map(lookup_index, ["7", "70", "700"])))      # [7, 70, 700]
        # a closure over a shared object, and the object as an argument: by reference
        print(ex.submit(lambda: len(rows)).result())               # 300000
        print(ex.submit(len, rows).result())                       # 300000
        total = sum(ex.map(len, [rows] * 8))                       # 8 tasks, 8 references
        assert total == 8 * len(rows)
