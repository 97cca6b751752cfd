"""A PyTorch DataLoader over a large Python list, with workers that keep sharing it.

The dataset is a list of small dicts (1,500,000 by default), loaded once in the parent.
DataLoader workers started by ``fork`` inherit it, but each item they read has its
reference count written, so every worker copies the pages of the items it reads. With
``multiprocessing_context=cowmp.get_context("cowfork")`` and ``cowmp.share(dataset.items)``
before the loader is made, the workers read the list without copying it (Python 3.12+).

For each start method (``fork``; ``cowfork``; ``cowfork`` after ``share()``) and with
``persistent_workers`` True and False, two epochs run and the script prints the private
memory (USS) of each worker at the end of each epoch. ``share()`` cannot be undone, so the
runs with it come last. With fork and cowfork the dataset is inherited, never pickled.

Needs torch (``pip install torch``; the CPU build is enough).
Run: python examples/pytorch_dataloader.py [--items N] [--quick] [--persistent yes|no|both]
"""

import argparse
import platform
import random
import time
import warnings

import psutil
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

import cowmp
import cowmp.memory

MiB = 2**20
EPOCHS = 2
BATCH_SIZE = 1000

# shuffle=True draws each epoch's order with torch.randperm, which starts torch's
# intra-op thread pool (OpenMP) in this process once the dataset has more than 32,768
# items. Workers started after that (every epoch with persistent_workers=False) are forked
# while the pool's threads exist, and cowfork warns (plain fork forks the same way,
# silently: PyTorch's default on Linux). Those threads wait idle while this thread forks,
# and PyTorch limits each worker to one thread, so only this warning is silenced: the
# one that counts threads not started through `threading` and no other thread.
warnings.filterwarnings(
    "ignore", r"cowmp is forking process \d+ while other threads are running: "
    r"\d+ thread\(s\) not started through threading", cowmp.ForkWithThreadsWarning)


def load_items(n):
    """What a real dataset keeps in memory: one small dict per sample."""
    return [{"id": i, "label": i % 10, "tokens": [i % 97, i % 89, i % 83]} for i in range(n)]


class Records(Dataset):
    def __init__(self, items):
        self.items = items
        self.rng = None  # each worker's own, set by seed_worker

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        item = self.items[index]
        shift = self.rng.randrange(3)  # a random augmentation: rotate the tokens
        tokens = item["tokens"][shift:] + item["tokens"][:shift]
        return {"id": item["id"], "label": item["label"], "tokens": torch.tensor(tokens)}


def seed_worker(worker_id):
    """worker_init_fn: runs in each worker as it starts (with persistent_workers=False, at
    every epoch). Gives the worker's dataset a random generator of its own, seeded with
    the seed torch chose for this worker."""
    info = get_worker_info()
    info.dataset.rng = random.Random(info.seed)


def workers_private_memory():
    """USS of each DataLoader worker (the children of this process), never RSS: RSS
    counts the pages a worker shares with the parent."""
    return [cowmp.memory.private_bytes(p.pid) for p in psutil.Process().children()]


def run(dataset, context, persistent, expected_tokens):
    """Two epochs; the USS of each worker at the end of each."""
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=2,
                        multiprocessing_context=context, persistent_workers=persistent,
                        worker_init_fn=seed_worker)
    n = len(dataset)
    usage = []
    for _ in range(EPOCHS):
        ids = tokens = 0
        for batch_number, batch in enumerate(loader):
            ids += int(batch["id"].sum())
            tokens += int(batch["tokens"].sum())
            if batch_number == len(loader) - 1:  # the workers have made every batch
                usage.append(workers_private_memory())
        # the batches are right: every item once, its tokens rotated but all there
        assert ids == n * (n - 1) // 2, ids
        assert tokens == expected_tokens, tokens
    del loader  # its workers (persistent ones included) are stopped and joined
    return usage


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_500_000)
    parser.add_argument("--quick", action="store_true", help="200,000 items")
    parser.add_argument("--persistent", choices=["yes", "no", "both"], default="both",
                        help="persistent_workers: True, False or both (default)")
    args = parser.parse_args()
    n = 200_000 if args.quick else args.items
    persistent_modes = {"yes": [True], "no": [False], "both": [True, False]}[args.persistent]

    before = cowmp.memory.private_bytes()
    dataset = Records(load_items(n))
    size = cowmp.memory.private_bytes() - before
    expected_tokens = sum(i % 97 + i % 89 + i % 83 for i in range(n))  # not reading items
    print(f"{n:,} items ({size / MiB:,.0f} MiB in the parent), 2 workers, "
          f"{EPOCHS} epochs, batch size {BATCH_SIZE}; "
          f"Python {platform.python_version()}, torch {torch.__version__}")

    cowfork = cowmp.get_context("cowfork")
    methods = [("fork", "fork", False), ("cowfork", cowfork, False),
               ("cowfork + share()", cowfork, True)]  # share() last: it is for good
    print("private memory (USS) of each worker at the end of each epoch:")
    for label, context, share in methods:
        if share:
            start = time.perf_counter()
            cowmp.share(dataset.items)  # before the loader is made, so before any worker
            print(f"  (share() took {time.perf_counter() - start:.2f} s)")
        for persistent in persistent_modes:
            usage = run(dataset, context, persistent, expected_tokens)
            epochs = "   ".join(
                f"epoch {e}: " + ", ".join(f"{uss / MiB:.1f}" for uss in workers) + " MiB"
                for e, workers in enumerate(usage, 1))
            print(f"{label:<18} persistent_workers={persistent!s:<5}  {epochs}")
    print(f"batches right: every epoch had the {n:,} items once")


if __name__ == "__main__":
    main()
