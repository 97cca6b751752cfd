"""PyTorch's DataLoader with cowfork workers: examples/pytorch_dataloader.py, and the
DataLoader's worker life cycle (worker_init_fn, persistent_workers) under cowfork.

torch is not in the test extra: these tests run where it is installed (cowmp on the
path), and are skipped elsewhere. Everything runs in a fresh interpreter: torch's thread
pool must not start in the process that runs the other tests.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT, requires_fork, run_script

import cowmp
from cowmp import immortal

torch = pytest.importorskip(
    "torch", reason="torch is not installed (it is not in the test extra; "
    "pip install torch to run the DataLoader tests)")

EXAMPLE = ROOT / "examples" / "pytorch_dataloader.py"
QUICK_ITEMS = 200_000
METHODS = ["fork", "cowfork", "cowfork + share()"]
# "cowfork + share()  persistent_workers=True   epoch 1: 7.8, 7.6 MiB   epoch 2: ..."
LINE = re.compile(r"^(fork|cowfork|cowfork \+ share\(\)) +persistent_workers=(True|False) +"
                  r"(epoch 1: .* MiB)$", re.M)
EPOCH = re.compile(r"epoch (\d+): ([\d., ]+) MiB")


def run_example(*args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLE), "--quick", *args],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def private_memory(stdout: str) -> dict[tuple[str, bool], list[list[float]]]:
    """{(method, persistent_workers): [the USS of each worker, in MiB] for each epoch}."""
    table = {}
    for method, persistent, epochs in LINE.findall(stdout):
        table[method, persistent == "True"] = [
            [float(figure) for figure in figures.split(", ")]
            for _, figures in EPOCH.findall(epochs)]
    return table


@pytest.mark.parametrize("persistent", ["yes", "no"])
def test_example_batches_and_memory_lines(persistent):
    # the example asserts every epoch's batches itself (the sum of the items' ids and of
    # their tokens) and fails if a worker's worker_init_fn did not run (its dataset has
    # no random generator then)
    stdout = run_example("--persistent", persistent)
    assert f"batches right: every epoch had the {QUICK_ITEMS:,} items once" in stdout
    table = private_memory(stdout)
    assert sorted(table) == sorted((method, persistent == "yes") for method in METHODS)
    for epochs in table.values():
        assert len(epochs) == 2
        if not cowmp.FALLBACK:  # there, loky's helper processes are children too
            assert all(len(workers) == 2 for workers in epochs), stdout
        assert all(uss > 0 for workers in epochs for uss in workers)


@pytest.mark.parametrize("method", ["fork", "cowfork"])
def test_worker_init_fn_and_persistent_workers(method):
    """worker_init_fn runs once in each worker, in the worker; persistent workers serve
    both epochs, others are started again at each epoch: under cowfork as under fork."""
    out = run_script(f"""
        import os
        import cowmp
        import torch
        from torch.utils.data import DataLoader, Dataset, get_worker_info

        started = []   # in each worker: the worker_init_fn calls it saw

        class Items(Dataset):
            def __init__(self, items):
                self.items = items
            def __len__(self):
                return len(self.items)
            def __getitem__(self, index):
                return self.items[index]["id"], os.getpid(), len(started)

        def init(worker_id):
            assert get_worker_info().id == worker_id
            started.append((worker_id, os.getpid()))

        if __name__ == "__main__":
            items = cowmp.share([{{"id": i}} for i in range(1000)])
            context = {method!r}
            if context == "cowfork":
                context = cowmp.get_context("cowfork")
            for persistent in (True, False):
                loader = DataLoader(Items(items), batch_size=10, num_workers=2,
                                    multiprocessing_context=context, worker_init_fn=init,
                                    persistent_workers=persistent)
                pids = []
                for epoch in range(2):
                    ids = []
                    for batch_ids, batch_pids, inits in loader:
                        ids += batch_ids.tolist()
                        assert set(inits.tolist()) == {{1}}   # once, in this worker
                        pids.append(set(batch_pids.tolist()))
                    assert sorted(ids) == list(range(1000))
                assert os.getpid() not in set().union(*pids)
                workers = len(set().union(*pids))
                print(f"persistent_workers={{persistent}}: {{workers}} workers")
                assert workers == (2 if persistent else 4), workers
                del loader
            assert not started
    """, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["persistent_workers=True: 2 workers",
                                          "persistent_workers=False: 4 workers"]


@requires_fork
@pytest.mark.skipif(not immortal.CAN_IMMORTALIZE,
                    reason="share() makes objects immortal on 64-bit CPython 3.12+ only")
@pytest.mark.quiet
def test_shared_dataset_keeps_workers_small():
    """Workers that read a shared dataset own less memory than plain fork workers, which
    copy the pages of the items they read (loosely: 7.8 against 45 MiB here)."""
    table = private_memory(run_example("--persistent", "no"))
    shared = max(max(workers) for workers in table["cowfork + share()", False])
    forked = min(min(workers) for workers in table["fork", False])
    assert shared < forked, table
