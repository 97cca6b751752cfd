"""``python -m cowmp demo``: the same workload under each start method, side by side."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import cowmp
from cowmp import demo
from cowmp.__main__ import main
from cowmp.immortal import CAN_IMMORTALIZE


def _demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cowmp", "demo", *args],
                          capture_output=True, text=True, timeout=timeout)


def _table(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("start method"))
    rows = {}
    for line in lines[start + 1:]:
        label = line[:18].strip()
        if not label or label.startswith(("cowmp.share", "Python", "total", "chart")):
            break
        rows[label] = line[18:].split()
    return rows


@pytest.mark.quiet  # compares the private memory of the workers of two start methods
def test_quick_demo_prints_every_method_side_by_side():
    out = _demo("--quick")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("data set: 150,000 tuples")
    table = _table(out.stdout)
    methods = [label.split()[0] for label in table]
    assert methods[-1] == "cowfork" and "loky" in methods
    assert ("forkserver" in methods or "spawn" in methods)
    for figures in table.values():  # total PSS, private/worker, %, start-up, work
        assert figures[1] == "MiB" and figures[3] == "MiB"
        assert float(figures[0].replace(",", "")) > 0 and float(figures[5]) >= 0
    if not cowmp.FALLBACK and CAN_IMMORTALIZE:
        cow = float(table["cowfork + share()"][2])
        fork = float(table["fork"][2])
        assert cow < fork / 4, (cow, fork)  # the workers copied what they read under fork
        assert "cowmp.share() took" in out.stdout


def test_run_method_reports_each_worker():
    heap, _ = demo.build(20_000)
    try:
        row = demo.run_method("cowfork", 2, share=False)
    finally:
        demo._release_data()
    assert row.workers == 2 and len(row.worker_private) == 2 and len(row.worker_pss) == 2
    assert row.total_pss >= row.parent_pss + sum(row.worker_pss)
    assert not row.shared and row.label == "cowfork" and row.heap == heap


def test_run_method_needs_a_data_set():
    with pytest.raises(RuntimeError, match="build the data set first"):
        demo.run_method("cowfork", 1)


def test_plot_writes_a_png(tmp_path):
    if importlib.util.find_spec("matplotlib") is None:  # not imported: numpy starts threads
        pytest.skip("matplotlib is not installed (optional extra 'plot')")
    path = tmp_path / "demo.png"
    out = _demo("--objects", "20000", "--workers", "1", "--methods", "spawn,cowfork",
                "--plot", str(path))
    assert out.returncode == 0, out.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"chart written to {path}" in out.stdout


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)  # had it not failed, the chart would be written here
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--plot", "x.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cowmp demo [-h]")
    assert ("cowmp demo: error: argument --plot: matplotlib is not installed: "
            "pip install 'cowmp[plot]'") in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--workers", "0"], "argument --workers: must be positive, not 0"),
    (["--workers", "1.5"], "argument --workers: not a whole number: '1.5'"),
    (["--objects", "-5"], "argument --objects: must be positive, not -5"),
    (["--objects", "many"], "argument --objects: not a whole number: 'many'"),
    (["--methods", "nope"], "argument --methods: unknown start method 'nope': choose among "),
    (["--methods", "fork,threads"],
     "argument --methods: unknown start method 'threads': choose among "),
    (["--methods", ","], "argument --methods: no start method in ',': choose among "),
    (["--quick", "--bogus", "x"], "unrecognized arguments: --bogus x"),
])
def test_demo_rejects_bad_arguments_with_its_own_usage(args, message):
    out = _demo(*args, timeout=60)
    assert out.returncode == 2
    # the demo's usage, not the top-level one, then the error naming the bad value
    assert out.stderr.startswith("usage: python -m cowmp demo [-h]"), out.stderr
    assert f"\npython -m cowmp demo: error: {message}" in out.stderr
    if "choose among" in message:  # the valid ones: every method this system has
        valid = out.stderr.split("choose among ")[1].strip().split(", ")
        assert set(demo.available_methods()) | {"spawn"} <= set(valid) <= set(demo.METHODS)
    assert out.stdout == ""


def test_check_methods_names_the_valid_methods():
    assert demo.check_methods("cowfork, fork") == ["fork", "cowfork"]  # the demo's order
    with pytest.raises(ValueError,
                       match=r"unknown start method 'nope': choose among .*loky, cowfork$"):
        demo.check_methods("nope")
