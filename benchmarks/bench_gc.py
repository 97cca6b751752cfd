"""A child that runs three full collections over an inherited heap: how much does it copy?

Target: with cowfork the child's private memory (USS) stays ≤ 2% of the
parent's heap, beside plain fork (55–77% on this project's machines).
Usage: python benchmarks/bench_gc.py [--objects 2000000]
"""

from __future__ import annotations

import argparse
import gc
import os

from _common import MiB, build_heap, header, measure_child, record, uss

import cowmp


def measure(fork, heap_bytes: int) -> tuple[float, float]:
    def work() -> None:
        gc.enable()
        for _ in range(3):
            gc.collect()

    elapsed, private = measure_child(fork, work)
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
    for method, share, seconds in (("fork", plain, plain_t), ("cowfork", cow, cow_t)):
        record("gc", {"method": method, "heap_mib": heap / MiB,
                      "child_private_mib": share * heap / MiB, "child_private_pct": 100 * share,
                      "gc_s": seconds})
    record("gc", {"target": "cowfork child private at most 2% of the heap",
                  "measured": f"{cow:.1%}", "result": "PASS" if cow <= 0.02 else "FAIL"})
    del data


if __name__ == "__main__":
    main()
