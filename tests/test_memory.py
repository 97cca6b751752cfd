"""cowmp.memory, ``python -m cowmp mem`` and the executor's memory reports and recycling."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import requires_fork, wait_for

import cowmp
import cowmp.limits
from cowmp import memory
from cowmp.__main__ import mem

MiB = 1024 * 1024
LINUX = sys.platform.startswith("linux")
requires_proc = pytest.mark.skipif(not LINUX, reason="copied and PSS need Linux's /proc")

KEEP: list = []


def _hold(ready, release):  # type: ignore[no-untyped-def]
    ready.put(os.getpid())
    release.wait(60)


def _grow(mib: int) -> int:
    KEEP.append(bytearray(b"\x01") * (mib * MiB))
    return os.getpid()


def _grow_slowly(mib: int) -> int:
    time.sleep(0.005)  # long enough for a map to span several readings
    return _grow(mib)


def _pid(_=None) -> int:  # type: ignore[no-untyped-def]
    return os.getpid()


def _read_all(_=None) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Read a byte of each page of BIG: (pid, the sum of the bytes read)."""
    return os.getpid(), sum(BIG[i + 1] for i in range(0, len(BIG) - 1, 4096))


BIG = b""


@pytest.fixture
def held(ctx):
    """Two cowfork children that hold still until the test ends."""
    ready, release = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_hold, args=(ready, release)) for _ in range(2)]
    for p in procs:
        p.start()
    pids = [ready.get(timeout=60) for _ in procs]
    yield pids
    release.set()
    for p in procs:
        p.join(30)


def _close(a: int | None, b: int | None, slack: int = 2 * MiB) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= max(slack, 0.02 * max(a, b))


def _pss_between(before, pss: int, after) -> bool:
    """A process's PSS moves whenever another process stops sharing its
    pages (an earlier test's process ending, say), so psutil reads it on
    both sides of cowmp's reading, which must lie between (or near)."""
    low, high = sorted((before.pss, after.pss))
    return _close(pss, low) or _close(pss, high) or low <= pss <= high


def _psutil_readings(pids: list[int]) -> dict:
    return {pid: psutil.Process(pid).memory_full_info() for pid in pids}


@requires_proc
def test_tree_agrees_with_psutil_on_a_live_tree(held):
    before = _psutil_readings(held)
    rows = memory.tree()
    by_pid = {row.pid: row for row in rows}
    assert rows[0].pid == os.getpid() and rows[0].role == "parent"
    assert set(held) <= set(by_pid)
    for pid in held:
        row, info = by_pid[pid], psutil.Process(pid).memory_full_info()
        assert row.role == "worker" and row.ppid == os.getpid()
        assert _close(row.rss, info.rss) and _close(row.uss, info.uss)
        assert _pss_between(before[pid], row.pss, info)
        assert row.shared == pytest.approx(row.rss - row.uss, abs=2 * MiB)
        assert row.uss < row.rss
        if cowmp.FALLBACK:  # spawned: nothing inherited
            assert row.copied is None
        else:
            assert row.copied is not None and row.copied <= row.uss
    totals = memory.totals(rows)
    assert totals["pss"] == sum(row.pss for row in rows)
    assert totals["rss"] == sum(row.rss for row in rows)


@requires_proc
@requires_fork
def test_copied_counts_copies_of_inherited_pages_not_new_memory(ctx):
    inherited = bytearray(b"\x01") * (48 * MiB)  # resident in the parent before the fork
    result = ctx.Queue()
    release = ctx.Event()

    def touch_inherited():
        for i in range(0, len(inherited), 4096):
            inherited[i] = 2  # each write copies one page
        result.put(os.getpid())
        release.wait(60)

    def allocate_new():
        KEEP.append(bytearray(b"\x01") * (48 * MiB))  # a new mapping: nothing copied
        result.put(os.getpid())
        release.wait(60)

    procs = [ctx.Process(target=f) for f in (touch_inherited, allocate_new)]
    try:
        rows = {}
        for p in procs:
            p.start()
            pid = result.get(timeout=60)
            rows[pid] = memory.process(pid)
        copier, allocator = rows[procs[0].pid], rows[procs[1].pid]
        assert copier.copied >= 46 * MiB and copier.uss >= 46 * MiB
        assert allocator.uss >= 46 * MiB
        assert allocator.copied < 10 * MiB
        assert memory.copied_since_fork(procs[0].pid) >= 46 * MiB
    finally:
        release.set()
        for p in procs:
            p.join(30)


def test_a_spawned_process_has_no_copied_figure():
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_hold, args=(ready, release))
    p.start()
    try:
        pid = ready.get(timeout=60)
        row = memory.process(pid, "worker")
        assert row.copied is None and row.role == "worker" and row.uss > 0
    finally:
        release.set()
        p.join(30)


def test_bad_pids_are_named_in_the_error():
    with pytest.raises(ProcessLookupError, match="no process with pid 999999999"):
        memory.process(999999999)
    with pytest.raises(ProcessLookupError, match="no process with pid"):
        memory.tree(999999999)
    with pytest.raises(TypeError, match="pid must be an int"):
        memory.process("1")  # type: ignore[arg-type]
    assert memory.processes({999999999: "worker"}) == []  # ended: left out


def test_memory_that_cannot_be_read_is_a_permission_error(monkeypatch, capsys):
    def refuse(pid, *args):  # type: ignore[no-untyped-def]
        raise psutil.AccessDenied(pid)

    monkeypatch.setattr(memory, "_measure", refuse)
    with pytest.raises(PermissionError, match=f"process {os.getpid()}: permission denied"):
        memory.process()
    lines: list[str] = []
    assert mem(os.getpid(), False, None, out=lines.append) == 1 and not lines
    assert capsys.readouterr().err == (
        f"cowmp mem: error: cannot read the memory of process {os.getpid()}: permission "
        "denied (run as its user or as root)\n")
    assert mem(os.getpid(), False, None, out=lines.append, prog="python -m cowmp mem") == 1
    assert capsys.readouterr().err.startswith("python -m cowmp mem: error: cannot read")


@pytest.mark.parametrize(("text", "size"), [
    (1000, 1000), ("512MiB", 512 * MiB), ("1.5 GiB", 3 * 512 * MiB), ("2GB", 2 * 10**9),
    ("300M", 300 * MiB), ("10k", 10240), ("7 B", 7)])
def test_parse_size(text, size):
    assert memory.parse_size(text) == size


@pytest.mark.parametrize("bad", ["abc", "", "GiB", "5 XB", "inf", "nan", 0, -3, "-5M"])
def test_parse_size_rejects_what_is_not_a_size(bad):
    with pytest.raises(ValueError, match="limit"):
        memory.parse_size(bad, "limit")


@pytest.mark.parametrize("bad", [1.5, True, None, [1]])
def test_parse_size_rejects_other_types(bad):
    with pytest.raises(TypeError, match="limit must be a number of bytes"):
        memory.parse_size(bad, "limit")


# -- python -m cowmp mem --------------------------------------------------------------------


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cowmp", "mem", *args],
                          capture_output=True, text=True, timeout=timeout)


@requires_proc
def test_mem_json_lists_the_tree_with_psutils_figures(held):
    before = _psutil_readings(held)
    out = _cli(str(os.getpid()), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert isinstance(rows, list)
    by_pid = {row["pid"]: row for row in rows}
    assert by_pid[os.getpid()]["role"] == "parent"
    for pid in held:
        row, info = by_pid[pid], psutil.Process(pid).memory_full_info()
        assert {"pid", "rss", "uss", "pss", "shared", "role", "copied"} <= set(row)
        assert _close(row["rss"], info.rss) and _close(row["uss"], info.uss)
        assert _pss_between(before[pid], row["pss"], info)


@requires_proc
def test_mem_table_has_a_line_per_process_and_totals(held):
    out = _cli(str(os.getpid()))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["PID", "PPID", "ROLE"]
    listed = {int(line.split()[0]) for line in lines[1:] if line.split()[0].isdigit()}
    assert set(held) | {os.getpid()} <= listed
    total = next(line for line in lines if line.split()[0] == "total")
    pss_total = float(total.split()[-3].replace(",", ""))  # PSS SHARED COPIED
    rows = [line.split() for line in lines[1:] if line.split()[0].isdigit()]
    pss = [float(r[-4].replace(",", "")) for r in rows]  # PSS SHARED COPIED NAME
    assert pss_total == pytest.approx(sum(pss), abs=0.1 * len(rows))


def test_mem_watch_reads_again_until_the_process_ends():
    # the watched process lives until its stdin is closed, after three readings
    watched = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "cowmp", "mem", str(watched.pid), "--watch", "0.05", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        readings = [json.loads(watcher.stdout.readline()) for _ in range(3)]
        watched.stdin.close()
        watched.wait(30)
        rest, err = watcher.communicate(timeout=60)
    finally:
        for proc in (watched, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert watcher.returncode == 0, err
    readings += [json.loads(line) for line in rest.splitlines()]
    assert all(reading[0]["pid"] == watched.pid for reading in readings), readings


def test_mem_watch_rounds_in_process():
    lines: list[str] = []
    assert mem(os.getpid(), True, 0.05, out=lines.append, rounds=3) == 0
    assert len(lines) == 3 and json.loads(lines[0])[0]["pid"] == os.getpid()


@pytest.mark.parametrize(("args", "message"), [
    (["999999999"], "argument PID: no process with pid 999999999"),
    (["4294967296"], "argument PID: no process with pid 4294967296"),
    (["0"], "argument PID: must be positive, not 0"),
    (["abc"], "argument PID: not a process id (a whole number): 'abc'"),
    (["1", "--watch", "-1"], "argument --watch: must be positive, not -1"),
    (["1", "--watch", "0"], "argument --watch: must be positive, not 0"),
    (["1", "--watch", "inf"], "argument --watch: must be a finite number of seconds, not inf"),
    (["1", "--watch", "soon"], "argument --watch: not a number of seconds: 'soon'"),
    (["1", "--watch", "1e300"], "argument --watch: must be at most "),
    (["1", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_mem_rejects_bad_input_with_its_own_usage(args, message):
    out = _cli(*args)
    assert out.returncode == 2
    assert out.stderr.startswith("usage: python -m cowmp mem [-h]"), out.stderr
    assert f"\npython -m cowmp mem: error: {message}" in out.stderr
    assert out.stdout == ""


# -- the executor ---------------------------------------------------------------------------


def _load_nothing():
    return None


@requires_fork
@pytest.mark.parametrize("loader", [None, _load_nothing], ids=["snapshot", "loader"])
def test_executor_reports_parent_fork_server_and_workers(loader):
    # with a loader the fork server is a new interpreter, not a fork of the parent
    with cowmp.CowProcessPoolExecutor(2, loader=loader) as executor:
        list(executor.map(_pid, range(4)))
        # a worker's pid is known once the fork server reports it
        assert wait_for(lambda: len(executor.worker_pids) == 2, 30), executor.worker_pids
        rows = executor.memory()
        roles = {row.pid: row.role for row in rows}
        assert roles[os.getpid()] == "parent"
        assert roles[executor.fork_server_pid] == "fork server"
        assert sorted(pid for pid, role in roles.items() if role == "worker") == sorted(
            executor.worker_pids)
        if LINUX:
            # the tree's own guesses agree with what the executor knows
            guessed = {row.pid: row.role for row in memory.tree()}
            assert guessed[executor.fork_server_pid] == "fork server"
            assert all(guessed[pid] == "worker" for pid in executor.worker_pids)
            assert all(row.copied is not None for row in rows if row.role == "worker")


@pytest.fixture
def forkserver_context():
    """multiprocessing's forkserver context; its server is stopped after the test if the
    test started it."""
    import multiprocessing.forkserver

    server = multiprocessing.forkserver._forkserver
    running = server._forkserver_pid is not None
    yield multiprocessing.get_context("forkserver")
    if not running:
        server._stop()


@requires_proc
def test_tree_names_multiprocessing_helpers(forkserver_context):
    with forkserver_context.Pool(1) as pool:
        pool.apply(_pid)
        roles = {row.role for row in memory.tree()}
    assert {"parent", "fork server", "worker"} <= roles


# -- roles in a tree that is not a cowmp executor's ----------------------------------------

requires_posix = pytest.mark.skipif(os.name != "posix", reason="runs sh and sleep")


@pytest.fixture
def session():
    """Start a command in a session of its own; the session is killed after the test."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        proc = subprocess.Popen(command, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _roles(pid: int) -> dict[int, str]:
    return {row.pid: row.role for row in memory.tree(pid)}


@requires_posix
def test_a_shell_and_the_programs_it_runs_have_no_role(session):
    # sh runs sleep (fork and exec) and a subshell (a fork of sh) that runs sleep
    shell = session(["sh", "-c", "sleep 60 & (sleep 60; :) & wait"])
    assert wait_for(lambda: len(memory.tree(shell.pid)) == 4, 30), memory.tree(shell.pid)
    roles = _roles(shell.pid)
    assert list(roles.values()) == ["process"] * 4, roles  # neither parent nor worker


@requires_posix
def test_a_python_program_that_runs_programs_is_not_their_parent(session):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print(flush=True); time.sleep(60)")
    root = session([sys.executable, "-c", code], stdout=subprocess.PIPE)
    root.stdout.readline()
    (child,) = psutil.Process(root.pid).children()
    assert _roles(root.pid) == {root.pid: "process", child.pid: "process"}
    assert _roles(child.pid) == {child.pid: "process"}  # a process alone


PROCESSES = """
import multiprocessing, sys, time

def hold():
    time.sleep(60)

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    procs = [ctx.Process(target=hold, daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    print(*[p.pid for p in procs], flush=True)
    time.sleep(60)
"""


@requires_posix
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_program_run_by_a_shell_is_the_parent_of_its_workers(session, tmp_path, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    script = tmp_path / "program.py"
    script.write_text(PROCESSES)
    shell = session(["sh", "-c", '"$0" "$1" "$2"; :', sys.executable, str(script), method],
                    stdout=subprocess.PIPE)
    workers = {int(pid) for pid in shell.stdout.readline().split()}
    (program,) = psutil.Process(shell.pid).children()
    expected = {shell.pid: "process",  # sh: not the parent of a pool
                program.pid: "parent",  # exec'd by sh, but it started the workers
                **dict.fromkeys(workers, "worker")}

    def as_expected() -> bool:
        # a process that spawn starts is a copy of its parent until it has exec'd
        roles = _roles(shell.pid)
        others = {role for pid, role in roles.items() if pid not in expected}
        return ({pid: roles.get(pid) for pid in expected} == expected
                and others <= {"resource tracker"})  # spawn: multiprocessing's

    assert wait_for(as_expected, 30), (expected, _roles(shell.pid))


RENAMED_AND_RERUN = r"""
import ctypes, os, subprocess, sys, time

def rename(title):
    # what setproctitle does: write over the memory that /proc/PID/cmdline reads
    fields = open("/proc/self/stat").read().rpartition(")")[2].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    ctypes.memmove(start, title.encode()[:end - start - 1].ljust(end - start, b"\0"),
                   end - start)

if __name__ == "__main__":
    if os.environ.get("RERUN"):  # started again by exec, with the same command line
        time.sleep(60)
    rerun = subprocess.Popen([sys.executable, *sys.argv], env={**os.environ, "RERUN": "1"})
    pid = os.fork()
    if pid == 0:
        rename("worker: renamed like gunicorn's")
        print(os.getpid(), rerun.pid, flush=True)
        time.sleep(60)
        os._exit(0)
    time.sleep(60)
"""


@pytest.mark.skipif(not memory._ASLR, reason="needs Linux with randomised address spaces")
def test_a_renamed_fork_is_a_worker_and_a_program_run_again_is_not(session, tmp_path):
    script = tmp_path / "program.py"
    script.write_text(RENAMED_AND_RERUN)
    root = session([sys.executable, str(script)], stdout=subprocess.PIPE)
    renamed, rerun = map(int, root.stdout.readline().split())
    assert psutil.Process(renamed).cmdline()[0] == "worker: renamed like gunicorn's"
    assert psutil.Process(rerun).cmdline() == psutil.Process(root.pid).cmdline()
    rows = {row.pid: row for row in memory.tree(root.pid)}
    assert rows[renamed].role == "worker" and rows[renamed].copied is not None
    assert rows[rerun].role == "process" and rows[rerun].copied is None
    assert rows[root.pid].role == "parent"


def test_a_forked_worker_read_alone_is_a_worker(held):
    assert [row.role for row in memory.tree(held[0])] == ["worker"]


@pytest.fixture
def quick_checks(monkeypatch):
    monkeypatch.setattr(cowmp.limits, "MEMORY_CHECK_INTERVAL", 0.05)


def _memory_read_since_last_task(executor) -> bool:  # type: ignore[no-untyped-def]
    """The manager thread has read the workers' memory since they last worked (no reading
    is due: the next is scheduled when a worker is given work)."""
    return executor._pool.memory_check_at is None


@pytest.mark.parametrize("method", [None, "spawn"])
def test_a_worker_over_its_private_memory_limit_is_replaced(quick_checks, method):
    ctx = None if method is None else multiprocessing.get_context(method)
    with cowmp.CowProcessPoolExecutor(1, mp_context=ctx,
                                      max_private_memory_per_child="90MiB") as executor:
        pids = []
        for _ in range(10):
            pids.append(executor.submit(_grow, 25).result(timeout=60))
            # a reading between two tasks
            assert wait_for(lambda: _memory_read_since_last_task(executor), 30)
        assert executor.recycled_workers >= 2
        # each worker ran a few tasks of 25 MiB, never far past 90 MiB
        runs = [len(list(group)) for group in _runs(pids)]
        assert len(runs) >= 3 and max(runs) <= 4


def _runs(values):  # type: ignore[no-untyped-def]
    import itertools

    return (group for _, group in itertools.groupby(values))


def test_a_worker_under_its_limit_is_kept(quick_checks):
    with cowmp.CowProcessPoolExecutor(1, max_private_memory_per_child="1GiB") as executor:
        pids = {executor.submit(_grow, 5).result(timeout=60) for _ in range(5)}
        assert wait_for(lambda: _memory_read_since_last_task(executor), 30)
        assert len(pids) == 1 and executor.recycled_workers == 0


@requires_proc
@requires_fork
def test_memory_shared_with_the_parent_does_not_count(quick_checks):
    global BIG
    BIG = bytes(range(256)) * (160 * MiB // 256)  # read by the workers, never written
    try:
        with cowmp.CowProcessPoolExecutor(
                2, max_private_memory_per_child="100MiB") as executor:
            results = list(executor.map(_read_all, range(8), chunksize=1))
            assert wait_for(lambda: _memory_read_since_last_task(executor), 30)
            pages = len(range(0, len(BIG) - 1, 4096))
            assert [total for _, total in results] == [pages] * 8  # BIG[i + 1] == 1
            rss = [psutil.Process(pid).memory_info().rss for pid in executor.worker_pids]
            assert min(rss) > 100 * MiB  # RSS would recycle them
            pids = {pid for pid, _ in results}
            assert executor.recycled_workers == 0 and pids <= set(executor.worker_pids)
    finally:
        BIG = b""


def test_map_loses_no_result_while_workers_are_recycled(quick_checks):
    with cowmp.CowProcessPoolExecutor(2, max_private_memory_per_child="40MiB") as executor:
        pids = list(executor.map(_grow_slowly, [1] * 150, chunksize=2))
        assert len(pids) == 150
        assert executor.recycled_workers >= 1 and len(set(pids)) >= 3


@pytest.mark.parametrize(("value", "error"), [
    ("lots", ValueError), (0, ValueError), (1.5, TypeError), ("-1GiB", ValueError)])
def test_bad_memory_limit_is_rejected_before_any_worker_starts(value, error):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(error, match="max_private_memory_per_child"):
        cowmp.CowProcessPoolExecutor(1, max_private_memory_per_child=value)
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before
