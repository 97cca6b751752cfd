"""map(progress=...): a tqdm bar (which leaves no thread behind), a plain line without
tqdm, and a stderr whose reader is gone, which neither fails the map nor the pool."""

from __future__ import annotations

import io
import sys

import executor_support as support
import pytest
from conftest import requires_fork, run_script
from executor_support import check_works, sleep_return, square

from cowmp import CowProcessPoolExecutor

no_leftovers = support.no_leftovers
make_executor = support.make_executor

# a script's head: squares in a main block (its body follows, indented as here)
_SQUARES_MAIN = """
        import threading, warnings
        import cowmp

        def square(x):
            return x * x

        if __name__ == "__main__":"""


class _BrokenPipeStream:
    """A stderr whose reader is gone."""

    encoding = "utf-8"
    errors = "strict"

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation("no file descriptor")


@pytest.mark.timeout(120)
def test_progress_with_tqdm():
    # in a fresh interpreter: tqdm may leave its monitor thread behind (see below)
    pytest.importorskip("tqdm")
    out = run_script(_SQUARES_MAIN + """
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(sum(ex.map(square, range(50), progress=True)))
                print(sum(ex.map(square, range(20), progress={"desc": "squares"})))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(sum(i * i for i in range(50))),
                                  str(sum(i * i for i in range(20)))]
    assert "cowmp" in out.stderr and "50/50" in out.stderr, out.stderr
    assert "squares" in out.stderr and "20/20" in out.stderr, out.stderr


@requires_fork
@pytest.mark.timeout(120)
def test_a_tqdm_progress_bar_leaves_no_thread_behind():
    pytest.importorskip("tqdm")
    out = run_script(_SQUARES_MAIN + """
            warnings.simplefilter("error", cowmp.ForkWithThreadsWarning)
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(sum(ex.map(square, range(50), progress=True)))
            print(sorted(t.name for t in threading.enumerate()))
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(ex.submit(square, 3).result(30))
    """, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [
        str(sum(i * i for i in range(50))), "['MainThread']", "9"], out.stderr[-3000:]


@pytest.mark.timeout(60)
def test_progress_without_tqdm_prints_a_plain_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with CowProcessPoolExecutor(max_workers=2) as ex:
        assert list(ex.map(square, range(50), progress=True)) == [
            i * i for i in range(50)]
        assert list(ex.map(square, iter(range(30)), progress=True)) == [
            i * i for i in range(30)]
    err = capsys.readouterr().err
    assert "cowmp: 50/50 (100%)" in err, err
    assert "cowmp: 30 tasks" in err, err


@pytest.mark.timeout(120)
def test_progress_without_tqdm_in_a_fresh_interpreter():
    out = run_script("""
        import sys
        sys.modules["tqdm"] = None
        import cowmp

        def square(x):
            return x * x

        if __name__ == "__main__":
            with cowmp.CowProcessPoolExecutor(max_workers=2) as ex:
                print(sum(ex.map(square, range(40), progress=True)))
    """, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(i * i for i in range(40)))
    assert "40/40 (100%)" in out.stderr, out.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bar", ["tqdm", "plain"])
def test_progress_to_a_broken_stderr_neither_fails_the_map_nor_breaks_the_pool(
        make_executor, monkeypatch, bar):
    if bar == "tqdm":
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    ex = make_executor(max_workers=2)
    check_works(ex)
    monkeypatch.setattr(sys, "stderr", _BrokenPipeStream())
    try:
        results = list(ex.map(square, range(50), progress=True, timeout=30))
        more = list(ex.map(sleep_return, [0.25] * 4, range(4), progress=True, timeout=30))
    finally:
        monkeypatch.undo()
    assert results == [i * i for i in range(50)]
    assert more == [0, 1, 2, 3]
    check_works(ex)
