"""Command line: ``python -m cowmp demo``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cowmp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="show how much of an inherited heap forked workers copy: fork vs cowfork")
    demo.add_argument("--objects", type=int, default=1_000_000,
                      help="tuples in the heap (default 1,000,000, about 240 MiB)")
    demo.add_argument("--workers", type=int, default=2, help="workers per start method")
    demo.add_argument("--quick", action="store_true",
                      help="a small heap (200,000 tuples) that finishes in seconds")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.objects <= 0 or args.workers <= 0:
            parser.error("--objects and --workers must be positive")
        from . import demo as demo_module

        demo_module.main(200_000 if args.quick else args.objects, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
