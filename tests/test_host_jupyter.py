"""cowmp in a Jupyter kernel, run headless: functions, classes and closures defined in
cells, share(), map(progress=True), cowfork processes, and the executor whose fork server
loads the data itself (the kernel runs threads: that one does not fork the kernel).
Optional: needs nbclient, nbformat and ipykernel (skipped where they are absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the Jupyter test needs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the Jupyter test needs nbclient")
pytest.importorskip("ipykernel", reason="the Jupyter test needs ipykernel")

ROOT = Path(__file__).resolve().parent.parent

CELLS = [
    # a function, a class and a closure defined in cells, sent to workers
    """
import os, warnings
import cowmp

def square(x):
    return x * x

class Box:
    def __init__(self, value):
        self.value = value

def scaled(factor):
    return lambda x: Box(x * factor)
""",
    # the kernel runs threads: an executor forking its server from it warns (rightly)
    """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with cowmp.CowProcessPoolExecutor(2) as ex:
        squares = list(ex.map(square, range(10)))
        boxes = [b.value for b in ex.map(scaled(3), range(5), progress=True)]
        table = cowmp.share(list(range(1000)))
        total = ex.submit(sum, table).result()
print("squares", squares)
print("boxes", boxes)
print("total", total)
print("fork warnings", sum(issubclass(w.category, cowmp.ForkWithThreadsWarning)
                           for w in caught) > 0 or cowmp.FALLBACK)
""",
    # a fork server that loads the data itself: no fork of the kernel, no warning
    """
def load(n):
    return {i: str(i) for i in range(n)}

def lookup(key):
    return cowmp.loaded()[key]

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with cowmp.CowProcessPoolExecutor(2, loader=load, loader_args=(1000,)) as ex:
        found = list(ex.map(lookup, [1, 500, 999]))
print("found", found)
print("loader warnings", [str(w.message) for w in caught
                          if issubclass(w.category, cowmp.ForkWithThreadsWarning)])
""",
    # a cowfork process started from a cell
    """
ctx = cowmp.get_context("cowfork")
queue = ctx.Queue()
process = ctx.Process(target=lambda q: q.put(square(7)), args=(queue,))
with warnings.catch_warnings():
    warnings.simplefilter("ignore", cowmp.ForkWithThreadsWarning)
    process.start()
print("process", queue.get(timeout=60))
process.join(30)
print("exitcode", process.exitcode)
""",
]


def _outputs(notebook) -> str:
    text = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text.append(output["text"])
    return "".join(text)


@pytest.mark.timeout(300)
def test_a_notebook_runs_executors_processes_and_a_loader(tmp_path, monkeypatch):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source.strip()) for source in CELLS]
    # the kernel (this interpreter: nbclient's native kernel) imports this checkout's cowmp
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    out = _outputs(notebook)
    assert "squares [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out
    assert "boxes [0, 3, 6, 9, 12]" in out
    assert f"total {sum(range(1000))}" in out
    assert "fork warnings True" in out
    assert "found ['1', '500', '999']" in out
    assert "loader warnings []" in out
    assert "process 49" in out and "exitcode 0" in out
