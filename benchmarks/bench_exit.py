"""A forked child of a big dict is stopped with SIGTERM: how many pages does its exit copy?

Target: a child made with ``cowmp.fork()`` that leaves through ``cowmp.exit()``
incurs ≤ 5% of the minor page faults of a bare ``os.fork()`` child that leaves through
the normal interpreter exit (read from ``os.wait4``).  The third line is a
``cowmp.fork()`` child that leaves normally (its inherited module data is pinned).
Usage: python benchmarks/bench_exit.py [--entries 3000000]
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from _common import header, record

import cowmp

DATA: dict = {}


def child_faults(fork, leave) -> tuple[int, int]:
    ready_r, ready_w = os.pipe()
    pid = fork()
    if pid == 0:
        def on_term(sig, frame):
            leave()
        signal.signal(signal.SIGTERM, on_term)
        os.write(ready_w, b"x")
        while True:
            time.sleep(1)
    os.read(ready_r, 1)
    os.close(ready_r)
    os.close(ready_w)
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    _, status, usage = os.wait4(pid, 0)
    return usage.ru_minflt, os.waitstatus_to_exitcode(status)


def leave_normally():
    """The normal interpreter exit, as ``sys.exit(0)`` in a SIGTERM handler gives it: the
    module globals and the heap they hold are torn down."""
    raise SystemExit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=3_000_000)
    args = parser.parse_args()
    header("Exit of a forked child after SIGTERM: minor page faults")
    global DATA
    DATA = {i: i for i in range(args.entries)}  # module data, as a program loads it
    d = DATA
    print(f"inherited dict (a module global): {len(d):,} entries")
    plain, plain_code = child_faults(os.fork, leave_normally)
    cow, cow_code = child_faults(cowmp.fork, lambda: cowmp.exit(0))
    pinned, pinned_code = child_faults(cowmp.fork, leave_normally)
    print(f"{'os.fork + normal exit':32} {plain:9,} minor faults  exit code {plain_code}")
    print(f"{'cowmp.fork + cowmp.exit':32} {cow:9,} minor faults  exit code {cow_code}")
    print(f"{'cowmp.fork + normal exit':32} {pinned:9,} minor faults  exit code {pinned_code}")
    print(f"ratio cowmp.exit / os.fork exit: {cow / plain:.3f}")
    print(f"ratio pinned normal exit / os.fork exit: {pinned / plain:.3f}")
    print(f"target cowmp.exit <= 5%: {'PASS' if cow <= 0.05 * plain else 'FAIL'}")
    for case, faults, code in (("os.fork + normal exit", plain, plain_code),
                               ("cowmp.fork + cowmp.exit", cow, cow_code),
                               ("cowmp.fork + normal exit", pinned, pinned_code)):
        record("exit", {"child": case, "dict_entries": len(d), "minor_faults": faults,
                        "vs_os_fork_pct": 100 * faults / plain, "exit_code": code})
    record("exit", {"target": "cowmp.exit: at most 5% of the minor faults of os.fork's exit",
                    "measured": f"{cow / plain:.1%}",
                    "result": "PASS" if cow <= 0.05 * plain else "FAIL"})


if __name__ == "__main__":
    main()
