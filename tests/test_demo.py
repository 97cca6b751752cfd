"""``python -m cowmp demo``: the same workload under each start method, side by side."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import requires_fork

import cowmp
from cowmp import demo
from cowmp.__main__ import main
from cowmp.immortal import CAN_IMMORTALIZE


def _demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cowmp", "demo", *args],
                          capture_output=True, text=True, timeout=timeout)


def _table(stdout: str) -> dict[str, list[str]]:
    """The table's rows by label: [total PSS, private/worker, copied, start-up, work]."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("start method"))
    rows = {}
    for line in lines[start + 1:]:
        label = line[:18].strip()
        if not label or not line[18:].strip().split()[1:2] == ["MiB"]:
            break
        figures = line[18:].replace(" MiB", "").replace("own copy", "own-copy").split()
        rows[label] = figures
    return rows


def _mib(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.quiet  # compares the private memory of the workers of two start methods
def test_quick_demo_prints_every_method_side_by_side():
    out = _demo("--quick")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("data set: 150,000 tuples")
    table = _table(out.stdout)
    methods = [label.split()[0] for label in table]
    assert methods[-1] == "cowfork" and "loky" in methods
    assert ("forkserver" in methods or "spawn" in methods)
    for label, (total, private, copied, startup, work) in table.items():
        assert _mib(total) > 0 and _mib(private) > 0 and float(startup) >= 0
        assert float(work) >= 0
        inherited = label.split()[0] in ("fork", "cowfork") and not cowmp.FALLBACK
        if inherited:  # a part of the parent's memory: never above 100%
            assert copied.endswith("%") and 0 <= float(copied[:-1]) <= 100, copied
        else:
            assert copied == "own-copy"
    assert "PSS: a process's own pages plus its share" in out.stdout  # the legend
    if not cowmp.FALLBACK:
        fork = table["fork"]
        cow = table["cowfork + share()" if CAN_IMMORTALIZE else "cowfork"]
        # read (3.12+): fork's workers copy what they read; collect (3.10, 3.11): what
        # their collections write.  cowfork's workers copy next to nothing either way.
        assert _mib(cow[1]) < _mib(fork[1]) / 4, (cow, fork)
    if not cowmp.FALLBACK and CAN_IMMORTALIZE:
        assert "cowmp.share() took" in out.stdout and "µs a tuple" in out.stdout
    elif not cowmp.FALLBACK:
        assert "full collections and read nothing" in out.stdout
        assert "reading an object writes its reference count" in out.stdout
        assert "a forked child's exit over the data set" in out.stdout


@requires_fork
def test_the_exit_line_shows_the_teardown_copying_what_cowmp_exit_does_not():
    demo.build(50_000)
    try:
        cost = demo.exit_cost()
    finally:
        demo._release_data()
    # the teardown writes every object of the data set (several MiB); cowmp.exit() ends
    # with os._exit: a few pages (the exit's own)
    assert cost.teardown_faults * demo.PAGE > 4 * demo.MiB, cost
    assert cost.cowmp_faults < cost.teardown_faults / 10, cost
    assert "cowmp.exit()" in cost.line()


@requires_fork
@pytest.mark.parametrize("workload", demo.WORKLOADS)
def test_each_workload_runs_and_a_forked_worker_copies_little_under_cowfork(workload):
    demo.build(20_000)
    try:
        row = demo.run_method("cowfork", 1, share=False, workload=workload)
    finally:
        demo._release_data()
    assert row.workload == workload and row.copied_share is not None
    assert 0 <= row.copied_share <= 1


def test_an_unknown_workload_is_refused():
    with pytest.raises(ValueError, match="unknown workload 'write'"):
        demo.run_method("cowfork", 1, workload="write")
    out = _demo("--workload", "write", timeout=60)
    assert out.returncode == 2 and "invalid choice: 'write'" in out.stderr


def test_the_data_set_size_is_the_same_on_every_run():
    sizes = {demo.build(10_000)[0] for _ in range(3)}
    demo._release_data()
    assert len(sizes) == 1


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
