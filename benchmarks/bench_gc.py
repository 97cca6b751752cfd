"""A child that runs three full collections over an inherited heap: how much does it copy?

Target (issue 2): with cowfork the child's private memory (USS) stays ≤ 2% of the
parent's heap, beside plain fork (55–77% on this project's machines).
Usage: python benchmarks/bench_gc.py [--objects 2000000]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

from _common import MiB, build_heap, header, uss

import cowmp


def measure(fork, heap_bytes: int) -> tuple[float, float]:
    to_parent_r, to_parent_w = os.pipe()
    to_child_r, to_child_w = os.pipe()
    pid = fork()
    if pid == 0:
        gc.enable()
        start = time.perf_counter()
        for _ in range(3):
            gc.collect()
        elapsed = time.perf_counter() - start
        os.write(to_parent_w, f"{elapsed:.3f}".encode())
        os.read(to_child_r, 1)
        os._exit(0)
    elapsed = float(os.read(to_parent_r, 64))
    private = uss(pid)
    os.write(to_child_w, b"x")
    os.waitpid(pid, 0)
    for fd in (to_parent_r, to_parent_w, to_child_r, to_child_w):
        os.close(fd)
    return private / heap_bytes, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=2_000_000)
    args = parser.parse_args()
    header("GC in a forked child: private memory after three full collections")
    before = uss()
    data = build_heap(args.objects)
    heap = uss() - before
    print(f"heap: {args.objects:,} tuples, {heap / MiB:.0f} MiB")
    plain, plain_t = measure(os.fork, heap)
    cow, cow_t = measure(cowmp.fork, heap)
    print(f"{'fork':10} child private {plain:7.1%} of the heap   GC {plain_t:6.2f} s")
    print(f"{'cowfork':10} child private {cow:7.1%} of the heap   GC {cow_t:6.2f} s")
    print(f"ratio cowfork/fork private memory: {cow / plain:.3f}")
    print(f"target cowfork <= 2%: {'PASS' if cow <= 0.02 else 'FAIL'}")
    del data


if __name__ == "__main__":
    main()
