"""Shared by the benchmarks: building the inherited heap, measuring memory (USS, never RSS)."""

from __future__ import annotations

import os
import platform
import sys

import psutil


def build_heap(n: int) -> list:
    """DESIGN §1's heap: ``n`` tuples ``(i, str(i), [i])`` (2,000,000 ≈ 480 MiB)."""
    return [(i, str(i), [i]) for i in range(n)]


def uss(pid: int | None = None) -> int:
    return psutil.Process(pid or os.getpid()).memory_full_info().uss


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# Python {platform.python_version()} ({sys.implementation.name}), "
          f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}")


MiB = 1024 * 1024
