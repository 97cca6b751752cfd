"""A parent that forks many short-lived children while making cyclic garbage: does it grow?

Target: a parent that starts 200 short-lived cowfork children while making
~0.5 MB of cyclic garbage between each grows by no more than plain fork does, plus 30 MB.
Each mode runs in a fresh interpreter, side by side in this one run.  A second scenario
(garbage that is still alive at one fork and dropped after it, so that it is frozen) and
a third (the same while a long-lived child, such as a pool's worker, shares the heap) are
printed for information, with the "frozen" policy for contrast.
Usage: python benchmarks/bench_parent_policy.py [--children 200] [--objects 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import MiB, header, record

CHILD = r"""
import gc, json, sys, multiprocessing
sys.path.insert(0, {here!r})
from _common import build_heap, uss
import cowmp

class Node:
    def __init__(self, peer=None):
        self.peer = peer or self
        self.payload = [0] * 8

def garbage(nbytes):
    # ~nbytes of reference cycles
    return [Node() for _ in range(nbytes // 200)]

def noop():
    pass

def sleep():
    import time
    time.sleep(3600)

method, policy, scenario, children, objects = {args!r}
cowmp.set_gc_policy(policy)
ctx = cowmp.get_context(method)
data = build_heap(objects)
if scenario == "sibling-alive":
    sibling = ctx.Process(target=sleep, daemon=True); sibling.start()
start = uss()
held = None
for _ in range(children):
    if scenario == "between":
        g = garbage(500_000); del g          # made and dropped between two forks
    else:
        held = garbage(500_000)             # alive at this fork, dropped at the next
    p = ctx.Process(target=noop); p.start(); p.join()
    assert p.exitcode == 0
print(json.dumps(uss() - start))
"""


def run(method: str, policy: str, scenario: str, children: int, objects: int) -> float:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(here=here, args=(method, policy, scenario, children, objects))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout) / MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=200)
    parser.add_argument("--objects", type=int, default=1_000_000)
    args = parser.parse_args()
    header(f"Parent growth over {args.children} short-lived children, "
           f"{args.objects:,}-tuple heap")
    results = {}
    for scenario in ("between", "held-across-fork", "sibling-alive"):
        for method, policy in (("fork", "auto"), ("cowfork", "auto"), ("cowfork", "frozen")):
            growth = run(method, policy, scenario, args.children, args.objects)
            results[scenario, method, policy] = growth
            label = method if method == "fork" else f"cowfork ({policy})"
            print(f"{scenario:17} {label:18} parent grew {growth:8.1f} MiB")
            record("parent_policy", {"scenario": scenario, "method": label,
                                     "children": args.children, "heap_tuples": args.objects,
                                     "parent_growth_mib": growth})
    fork = results["between", "fork", "auto"]
    cow = results["between", "cowfork", "auto"]
    print(f"difference cowfork - fork (garbage between forks): {cow - fork:+.1f} MiB")
    print(f"target <= fork + 30 MiB: {'PASS' if cow <= fork + 30 else 'FAIL'}")
    record("parent_policy", {"target": "cowfork parent grows at most fork's growth + 30 MiB "
                                       "(garbage between forks)",
                             "measured": f"{cow - fork:+.1f} MiB",
                             "result": "PASS" if cow <= fork + 30 else "FAIL"})


if __name__ == "__main__":
    main()
