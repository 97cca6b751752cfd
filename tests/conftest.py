from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import pytest

import cowmp

ROOT = Path(__file__).resolve().parent.parent

requires_fork = pytest.mark.skipif(
    cowmp.FALLBACK, reason="cowfork falls back to loky here: nothing is forked"
)


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll ``predicate`` until it is true; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def gone(pid):
    """True if ``pid`` no longer runs (absent, or a zombie nobody reaped yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def is_helper(proc):
    """loky's resource trackers (fallback mode) outlive a test: they are not ours."""
    try:
        return "resource_tracker" in " ".join(proc.cmdline())
    except psutil.ZombieProcess:
        return False
    except psutil.NoSuchProcess:
        return True  # gone meanwhile


def run_script(code: str, *, env: dict | None = None, timeout: float = 120,
               args: tuple = (), cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` as a script file in a fresh interpreter (the one running the tests).

    A file, not ``-c``, so that spawned children can re-import the main module.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONFAULTHANDLER", "1")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "script.py"
        script.write_text(textwrap.dedent(code))
        return subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True, text=True, timeout=timeout, env=full_env,
            cwd=cwd or tmp,
        )


@pytest.fixture
def ctx():
    return cowmp.get_context("cowfork")


@pytest.fixture(autouse=True)
def _no_children_left():
    yield
    for p in cowmp.active_children():
        p.terminate()
        p.join(5)
    assert not cowmp.active_children(), "a test left child processes running"
