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
from _pytest.runner import runtestprotocol

import cowmp

ROOT = Path(__file__).resolve().parent.parent

requires_fork = pytest.mark.skipif(
    cowmp.FALLBACK, reason="cowfork falls back to loky here: nothing is forked"
)

#: For a test that forks while other threads run, on purpose.  Python 3.12+ then warns
#: too (a DeprecationWarning at each such os.fork()); the test checks cowmp's
#: ForkWithThreadsWarning, or what cowmp does about that fork, and Python's own warning
#: about the same fork is a side effect of its setup: left out of the warnings summary.
forks_next_to_threads = pytest.mark.filterwarnings(
    r"ignore:This process \(pid=\d+\) is multi-threaded, use of fork\(\):DeprecationWarning"
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


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "quiet: needs a quiet machine (it measures time or memory ratios): retried once "
        "before it fails; run them apart with -m quiet, or leave them out with "
        "-m 'not quiet'",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """Run a test marked ``quiet`` a second time if the first run fails; the second
    run's outcome is reported (with a note that it was a second try)."""
    if item.get_closest_marker("quiet") is None:
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    if any(report.failed for report in reports):
        first = next(report for report in reports if report.failed)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        for report in reports:
            report.sections.append(("quiet: first try", str(first.longrepr)))
            if report.when == "call":
                report.user_properties.append(("quiet_retried", True))
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


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
