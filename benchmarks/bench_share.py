"""A child that reads every object of an inherited heap: how much does it copy, with and
without ``cowmp.share()``?

Targets, on 64-bit Python 3.12 and 3.13:
* a cowfork child (``cowmp.fork``) that reads every element of a shared list of
  2,000,000 tuples ``(i, str(i), [i])`` and then runs a full collection keeps at most 1%
  of the parent's heap private (USS), printed beside the same child without ``share()``;
* ``share()`` on that list (8 million objects) takes at most half the time it took to
  build it.
Each case runs in a fresh interpreter.  Before 3.12 ``share()`` cannot make the data
immortal (it warns): the figures are printed, the targets not judged.
Usage: python benchmarks/bench_share.py [--objects 2000000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PATH = ([ROOT] if os.path.isfile(os.path.join(ROOT, "cowmp", "__init__.py")) else []) + [HERE]


def child(objects: int, shared: bool) -> None:
    """One case, in a fresh interpreter: print its figures as JSON."""
    import warnings

    from _common import build_heap, measure_child, uss

    import cowmp
    from cowmp.demo import read_and_collect

    before = uss()
    start = time.perf_counter()
    data = build_heap(objects)
    built = time.perf_counter() - start
    heap = uss() - before
    sharing = 0.0
    if shared:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cowmp.SharingWarning)
            cowmp.share(data)
        sharing = time.perf_counter() - start
    def work() -> None:
        read_and_collect(data)  # every element, then a full collection

    work_seconds, private = measure_child(cowmp.fork, work)
    print(json.dumps({"heap": heap, "build": built, "share": sharing, "work": work_seconds,
                      "private": private, "immortal": cowmp.is_immortal(data[-1][1])}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=2_000_000)
    args = parser.parse_args()
    sys.path[:0] = PATH
    from _common import MiB, header, record, run_child

    header(f"A cowfork child reads {args.objects:,} shared tuples, then collects")
    cases = {}
    for shared in (False, True):
        label = "share()" if shared else "no share()"
        cases[label] = m = run_child(PATH, "bench_share", f"child({args.objects}, {shared})",
                                     label, timeout=1800)
        print(f"{label:11} heap {m['heap'] / MiB:6.0f} MiB  build {m['build']:5.2f} s  "
              f"share {m['share']:5.2f} s  child read+collect {m['work']:5.2f} s  "
              f"child private {m['private'] / MiB:7.1f} MiB = "
              f"{m['private'] / m['heap']:6.1%} of the heap", flush=True)
        record("share", {"case": label, "heap_mib": m["heap"] / MiB, "build_s": m["build"],
                         "share_s": m["share"], "read_collect_s": m["work"],
                         "child_private_mib": m["private"] / MiB,
                         "child_private_pct": 100 * m["private"] / m["heap"],
                         "immortal": m["immortal"]})
    plain, shared_case = cases["no share()"], cases["share()"]
    private = shared_case["private"] / shared_case["heap"]
    speed = shared_case["share"] / shared_case["build"]
    print(f"private memory, share() / no share(): "
          f"{shared_case['private'] / plain['private']:.3f}")
    print(f"share() time / build time: {speed:.2f}")
    judged = shared_case["immortal"]
    record("share", {"target": "child private at most 1% of the heap with share()",
                     "measured": f"{private:.2%}",
                     "result": ("PASS" if private <= 0.01 else "FAIL") if judged else "not judged"})
    record("share", {"target": "share() takes at most half the build time",
                     "measured": f"{speed:.2f}",
                     "result": ("PASS" if speed <= 0.5 else "FAIL") if judged else "not judged"})
    if not judged:
        print("targets not judged: this interpreter cannot make objects immortal")
        return
    print(f"target child private <= 1% of the heap with share(): "
          f"{'PASS' if private <= 0.01 else 'FAIL'} ({private:.2%})")
    print(f"target share() <= half the build time: {'PASS' if speed <= 0.5 else 'FAIL'} "
          f"({speed:.2f})")


if __name__ == "__main__":
    main()
