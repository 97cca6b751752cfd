"""Memory accounting through psutil: what a process owns alone (USS) and its share (PSS).

RSS counts every page a process maps, shared or not, so it hides exactly what cowmp
saves; USS is the memory that no other process shares (what a worker has copied).
"""

from __future__ import annotations

import os

import psutil

__all__ = ["private_bytes", "proportional_bytes"]


def _full_info(pid: int | None):  # type: ignore[no-untyped-def]
    return psutil.Process(os.getpid() if pid is None else pid).memory_full_info()


def private_bytes(pid: int | None = None) -> int:
    """USS of ``pid`` (default: this process): bytes that no other process shares."""
    return _full_info(pid).uss


def proportional_bytes(pid: int | None = None) -> int:
    """PSS of ``pid``: its private bytes plus its share of each shared page (Linux)."""
    info = _full_info(pid)
    return getattr(info, "pss", info.uss)
