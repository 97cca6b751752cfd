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


def run_child(path: list[str], module: str, call: str, label: str, timeout: float) -> dict:
    """Run ``module.call`` in a fresh interpreter with ``path`` first on sys.path; return
    the JSON object it prints last.  Exits with a message naming ``label`` on failure."""
    import json
    import subprocess

    code = f"import sys; sys.path[:0] = {path!r}; import {module}; {module}.{call}"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"FAILED: {label} took more than {timeout} s")
    if out.returncode != 0:
        sys.exit(f"FAILED: {label}, exit code {out.returncode}:\n{out.stderr}{out.stdout}")
    for line in out.stderr.splitlines():
        print(f"    ({label}) stderr: {line}")
    return json.loads(out.stdout.splitlines()[-1])


def check_cowmp(path: list[str], hint: str = "") -> str:
    """Fail clearly if the cowmp found through ``path`` has no executor; return where it
    is."""
    sys.path[:0] = path
    try:
        import cowmp
    except ImportError as error:
        sys.exit(f"FAILED: cannot import cowmp: {error}")
    where = os.path.dirname(cowmp.__file__)
    if not hasattr(cowmp, "CowProcessPoolExecutor"):
        sys.exit(f"FAILED: cowmp.CowProcessPoolExecutor does not exist (cowmp imported from "
                 f"{where}){hint}")
    return where
