"""The benchmark runner: one command writes RESULTS.md with figures, machine and charts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import ROOT, requires_fork


def test_run_all_writes_results_with_figures_and_a_chart(tmp_path):
    out_file = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--quiet",
         "--only", "gc", "exit", "--out", str(out_file)],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out_file.read_text()
    assert "## bench_gc" in text and "## bench_exit" in text and "## bench_share" not in text
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in text  # the Python
    assert "cores" in text  # the machine
    assert "| fork" in text and "cowfork" in text  # the figures, as a table
    # nothing of this machine's directories, and no traceback from a benchmark that passed
    assert str(ROOT) not in text and sys.executable not in text
    assert "Traceback" not in text and "Standard error" not in text
    if importlib.util.find_spec("matplotlib") is not None:
        chart = tmp_path / "results" / "gc.png"
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "](results/gc.png)" in text
    else:
        assert "pip install 'cowmp[plot]'" in text


def test_run_all_rejects_an_unknown_benchmark(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--only", "nothing",
         "--out", str(tmp_path / "R.md")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "no benchmark 'nothing'" in run.stderr
    assert not (tmp_path / "R.md").exists()


@requires_fork
def test_bench_loader_compares_the_loading_fork_server_with_spawn_workers():
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--quick"],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "cowmp loader" in run.stdout and "spawn, each loads" in run.stdout
    assert "ratio spawn / loader: PSS" in run.stdout
    assert "target loader total PSS at most half" in run.stdout


@requires_fork
def test_run_all_measures_the_executor_life_cycle_and_the_shapes_of_work(tmp_path):
    out_file = tmp_path / "RESULTS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--quiet",
         "--only", "lifecycle", "shapes", "--out", str(out_file)],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    text = out_file.read_text()
    assert "## bench_lifecycle" in text and "## bench_shapes" in text
    for phase in ("create", "all workers", "shutdown", "life cycle", "cycle"):
        assert f"| {phase} |" in text, phase  # a row per phase
    assert text.count("target life cycle") == 1
    assert "q-skewed" in text and "peers/cowmp" in text  # a row per cell, the ratios
    assert text.count("| target | measured | result |") == 2
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("lifecycle", "shapes"):
            chart = tmp_path / "results" / f"{name}.png"
            assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"](results/{name}.png)" in text
