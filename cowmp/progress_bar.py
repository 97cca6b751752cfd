"""Progress bars for ``map(..., progress=True)``: tqdm when installed, a plain line if not."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

__all__ = ["make_bar"]


class PlainBar:
    """A one-line progress report on stderr, redrawn at most five times a second."""

    def __init__(self, total: int | None, desc: str = "cowmp", file: TextIO | None = None,
                 interval: float = 0.2) -> None:
        self.total = total
        self.desc = desc
        self.file = file if file is not None else sys.stderr
        self.interval = interval
        self.n = 0
        self.start = time.monotonic()
        self.drawn = 0.0
        self.lock = threading.Lock()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            eta = (self.total - self.n) / rate if rate else float("nan")
            return (f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) "
                    f"{elapsed:.1f}s elapsed, {rate:.1f} tasks/s, eta {eta:.1f}s")
        return f"{self.desc}: {self.n} tasks, {elapsed:.1f}s elapsed, {rate:.1f} tasks/s"

    def update(self, n: int = 1) -> None:
        with self.lock:
            self.n += n
            now = time.monotonic()
            if now - self.drawn >= self.interval:
                self.drawn = now
                self.file.write("\r" + self.line())
                self.file.flush()

    def close(self) -> None:
        with self.lock:
            self.file.write("\r" + self.line() + "\n")
            self.file.flush()


class _Failsafe:
    """A bar whose drawing can fail (stderr a closed pipe, a closed file) without harm:
    the first failure stops the drawing; the map goes on."""

    def __init__(self, bar: Any) -> None:
        self.bar: Any = bar

    def update(self, n: int = 1) -> None:
        self._call("update", n)

    def close(self) -> None:
        self._call("close")
        self.bar = None

    def _call(self, name: str, *args: Any) -> None:
        if self.bar is None:
            return
        try:
            getattr(self.bar, name)(*args)
        except Exception:  # noqa: BLE001 - a progress bar must not fail the work
            self.bar = None


def make_bar(total: int | None, progress: Any) -> Any:
    """A bar for ``progress``: ``True`` (tqdm if importable, else :class:`PlainBar`), or
    a dict of options for tqdm (e.g. ``{"desc": "rows"}``).  Drawing it never raises."""
    options = dict(progress) if isinstance(progress, dict) else {}
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    try:
        if tqdm is None:
            bar = PlainBar(total, desc=options.get("desc", "cowmp"), file=options.get("file"))
        else:
            options.setdefault("desc", "cowmp")
            bar = _quiet_tqdm(tqdm)(total=total, **options)
    except (OSError, ValueError):  # a stream that cannot be written: no bar
        bar = None
    return _Failsafe(bar)


def _quiet_tqdm(tqdm: type) -> type:
    """tqdm without its monitor thread, which would outlive the bar: a process that
    forks afterwards (the next executor's fork server) must not have threads."""

    class Bar(tqdm):  # type: ignore[misc, valid-type]
        monitor_interval = 0

    return Bar
