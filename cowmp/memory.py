"""Memory accounting: what each process of a tree owns alone, shares, and has copied.

RSS counts every page a process maps, shared or not, so a worker that shares its whole
heap with its parent shows the same RSS as one that has copied it: RSS hides exactly
what cowmp saves.  The figures that show it:

* **USS** (``uss``, also ``private``): pages no other process maps.  A forked process
  starts with almost none: whatever it owns alone it has copied or allocated since.
* **PSS** (``pss``): its private pages plus, for each shared page, one share of it.
  The PSS of all the processes of a tree adds up to the memory the tree costs.
* ``shared``: resident pages that other processes map too (RSS - USS).
* ``copied``: for a forked process, the part of its USS that lies in memory it got from
  its parent by the fork (the address ranges its parent still maps): pages the kernel
  copied on write, a reference count, a GC header or an allocation in a page it shared.
  The rest of its USS is memory it mapped itself since.  ``None`` for a process that
  was not forked (spawned, exec'd, or whose parent has gone).

On Linux the figures come from ``/proc/PID/smaps_rollup`` (one kernel walk, no per
mapping text), and from ``/proc/PID/smaps`` for a forked process's ``copied``; elsewhere
from psutil's ``memory_full_info`` (no PSS on macOS and Windows: ``pss`` is ``None``).

The ``role`` of a process in a tree, one of :data:`ROLES`, is guessed from the process
tree and the command lines (roles given by the caller win: a cowmp executor gives the
exact ones).
"""

from __future__ import annotations

import bisect
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import psutil

__all__ = [
    "ProcessMemory", "copied_since_fork", "private_bytes", "process", "processes",
    "parse_size", "proportional_bytes", "totals", "tree",
]

_PROC = "/proc"
_LINUX = sys.platform.startswith("linux") and os.path.isdir(f"{_PROC}/self")


@dataclass(frozen=True)
class ProcessMemory:
    """One process's memory, in bytes (module docstring)."""

    pid: int
    ppid: int
    role: str
    name: str
    rss: int
    uss: int
    pss: int | None
    shared: int
    swap: int
    copied: int | None

    @property
    def private(self) -> int:
        """Same as ``uss``: the bytes that no other process shares."""
        return self.uss

    @property
    def proportional(self) -> int:
        """``pss``, or ``uss`` where the system has no PSS."""
        return self.uss if self.pss is None else self.pss

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# -- reading one process ----------------------------------------------------------------

_ROLLUP_FIELDS = {
    b"Rss:": "rss", b"Pss:": "pss", b"Shared_Clean:": "shared", b"Shared_Dirty:": "shared",
    b"Shared_Hugetlb:": "shared", b"Private_Clean:": "uss", b"Private_Dirty:": "uss",
    b"Private_Hugetlb:": "uss", b"Swap:": "swap",
}


def _figures() -> dict[str, int]:
    return {"rss": 0, "pss": 0, "shared": 0, "uss": 0, "swap": 0}


def _read_smaps(pid: int, by_mapping: bool) -> tuple[dict[str, int], list[tuple[int, int, int]]]:
    """Totals of ``/proc/PID/smaps_rollup`` (or of ``smaps`` when ``by_mapping``, or when
    the kernel refuses the rollup), and with ``by_mapping`` each mapping's
    ``(start, end, private bytes)``."""
    figures = _figures()
    mappings: list[tuple[int, int, int]] = []
    names = ["smaps"] if by_mapping else ["smaps_rollup", "smaps"]
    for position, name in enumerate(names):
        try:
            with open(f"{_PROC}/{pid}/{name}", "rb") as f:
                data = f.read()
        except (FileNotFoundError, ProcessLookupError):
            if position + 1 < len(names) and psutil.pid_exists(pid):
                continue  # some kernels refuse the rollup of a live process
            raise psutil.NoSuchProcess(pid) from None
        except PermissionError:
            raise psutil.AccessDenied(pid) from None
        break
    start = end = private = 0
    for line in data.splitlines():
        key, _, rest = line.partition(b" ")
        if not key.endswith(b":"):  # a mapping's header: "start-end perms offset ..."
            if by_mapping:
                if end:
                    mappings.append((start, end, private))
                low, _, high = key.partition(b"-")
                start, end, private = int(low, 16), int(high, 16), 0
            continue
        field = _ROLLUP_FIELDS.get(key)
        if field is not None:
            size = int(rest.split()[0]) * 1024
            figures[field] += size
            if field == "uss":
                private += size
    if by_mapping and end:
        mappings.append((start, end, private))
    return figures, mappings


def _address_ranges(pid: int) -> list[tuple[int, int]]:
    """The merged address ranges that ``pid`` maps (``/proc/PID/maps``)."""
    with open(f"{_PROC}/{pid}/maps", "rb") as f:
        spans = sorted(
            (int(low, 16), int(high, 16))
            for low, _, high in (line.split(b" ", 1)[0].partition(b"-") for line in f)
        )
    merged: list[tuple[int, int]] = []
    for low, high in spans:
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _inherited_private(mappings: list[tuple[int, int, int]],
                       parent: list[tuple[int, int]]) -> int:
    """Private bytes of ``mappings`` inside the ``parent`` ranges (a mapping only partly
    inside counts in proportion)."""
    starts = [low for low, _ in parent]
    total = 0.0
    for low, high, private in mappings:
        if not private:
            continue
        inside = 0
        at = max(bisect.bisect_right(starts, low) - 1, 0)
        while at < len(parent) and parent[at][0] < high:
            inside += max(0, min(high, parent[at][1]) - max(low, parent[at][0]))
            at += 1
        total += private * inside / (high - low)
    return int(total)


def _forked_from_parent(proc: psutil.Process) -> psutil.Process | None:
    """The parent ``proc`` was forked from, or None.  Both run the same program; where
    the kernel randomises address spaces (Linux, as configured by default), both have
    the same :func:`_landmarks`, which an exec would have drawn anew: a worker that
    renamed itself (setproctitle) is still known, and a program that started itself
    again with the same command line is not taken for a fork.  Elsewhere, both have the
    same command line."""
    try:
        parent = proc.parent()
        if parent is None or parent.pid == 0 or parent.exe() != proc.exe():
            return None
        if _ASLR:
            mine = _landmarks(proc.pid)
            same = mine[1] is not None and mine == _landmarks(parent.pid)
        else:
            same = parent.cmdline() == proc.cmdline()
        return parent if same else None
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess,
            FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _landmarks(pid: int) -> tuple[int | None, int | None]:
    """Where ``pid``'s heap begins and its main stack ends (``/proc/PID/maps``): a
    forked child keeps both addresses; exec draws them anew."""
    heap = stack = None
    with open(f"{_PROC}/{pid}/maps", "rb") as f:
        for line in f:
            if heap is None and line.endswith(b"[heap]\n"):  # its first mapping
                heap = int(line.split(b"-", 1)[0], 16)
            elif line.endswith(b"[stack]\n"):
                stack = int(line.split(b" ", 1)[0].partition(b"-")[2], 16)
    return heap, stack


def _randomised_address_spaces() -> bool:
    """Does the kernel place the stack at random (Linux's ``kernel.randomize_va_space``
    1, or 2, its default, which places the heap at random too)?"""
    if not _LINUX:
        return False
    try:
        with open(f"{_PROC}/sys/kernel/randomize_va_space") as f:
            return f.read().strip() in ("1", "2")
    except OSError:
        return False


_ASLR = _randomised_address_spaces()


def _measure(proc: psutil.Process, role: str,
             parent: psutil.Process | None) -> ProcessMemory:
    """``proc``'s figures; ``copied`` against ``parent``, the process it was forked from
    (None: no ``copied``)."""
    pid = proc.pid
    with proc.oneshot():
        ppid, name = proc.ppid(), proc.name()
        if proc.status() == psutil.STATUS_ZOMBIE:  # ended, not yet reaped: no memory
            raise psutil.ZombieProcess(pid)
    copied = None
    if _LINUX:
        figures, mappings = _read_smaps(pid, by_mapping=parent is not None)
        if parent is not None:
            try:
                copied = _inherited_private(mappings, _address_ranges(parent.pid))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                copied = None  # the parent left, or hides its maps
        pss: int | None = figures["pss"]
    else:
        info = proc.memory_full_info()
        figures = {"rss": info.rss, "uss": info.uss, "swap": getattr(info, "swap", 0),
                   "shared": max(info.rss - info.uss, 0)}
        pss = getattr(info, "pss", None)
    return ProcessMemory(pid=pid, ppid=ppid, role=role, name=name, rss=figures["rss"],
                         uss=figures["uss"], pss=pss, shared=figures["shared"],
                         swap=figures["swap"], copied=copied)


def _process(pid: int | None) -> psutil.Process:
    pid = os.getpid() if pid is None else pid
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"pid must be an int, not {type(pid).__name__}")
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {pid}") from None


def _read(proc: psutil.Process, role: str, parent: psutil.Process | None) -> ProcessMemory:
    """``_measure`` with errors that name the process."""
    try:
        return _measure(proc, role, parent)
    except psutil.AccessDenied:
        raise PermissionError(
            f"cannot read the memory of process {proc.pid}: permission denied (run as "
            "its user or as root)") from None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise ProcessLookupError(f"no process with pid {proc.pid} (it has ended)") from None


def process(pid: int | None = None, role: str = "process", *,
            copied: bool = True) -> ProcessMemory:
    """The memory of one process (default: this one).  ``copied=False`` skips the
    ``copied`` figure (it reads every mapping: about half as long again).
    ``ProcessLookupError`` if there is no such process, ``PermissionError`` if its
    memory cannot be read."""
    proc = _process(pid)
    return _read(proc, role, _forked_from_parent(proc) if copied else None)


def private_bytes(pid: int | None = None) -> int:
    """USS of ``pid`` (default: this process): bytes that no other process shares."""
    return process(pid, copied=False).uss


def proportional_bytes(pid: int | None = None) -> int:
    """PSS of ``pid``: its private bytes plus its share of each shared page (its USS
    where the system has no PSS)."""
    return process(pid, copied=False).proportional


def copied_since_fork(pid: int | None = None) -> int | None:
    """Bytes ``pid`` has copied from its parent since it was forked (module docstring);
    None if it was not forked or this system cannot tell (not Linux)."""
    return process(pid).copied


# -- trees -------------------------------------------------------------------------------

#: every role a process of a tree may get, and what it means (``cowmp mem --help``
#: prints them)
ROLES = {
    "parent": "started the workers, fork server or resource tracker below it",
    "fork server": "forks the workers: multiprocessing's forkserver, cowmp's fork server "
                   "(also one started as a new interpreter), or a forked copy of its "
                   "parent that forks copies of itself",
    "worker": "a Python process forked from its parent (even one that renamed itself), "
              "or started by multiprocessing or loky",
    "resource tracker": "multiprocessing's or loky's resource tracker",
    "process": "any other process (a shell, a program it runs, a process alone): cowmp "
               "cannot tell its role",
}

#: the roles of the processes that multiprocessing, loky and cowmp start, by a part of
#: their command lines
_ROLE_BY_COMMAND = (
    ("multiprocessing.forkserver", "fork server"),
    ("cowmp.fork_server import serve_in_new_interpreter", "fork server"),  # loader=
    ("resource_tracker", "resource tracker"),
    ("semaphore_tracker", "resource tracker"),
    ("multiprocessing.spawn import spawn_main", "worker"),  # spawn (cowmp's too)
    ("loky.backend.popen_loky_posix", "worker"),  # loky, cowmp's fallback
)
#: the roles of processes that multiprocessing, loky or cowmp started for a parent
_STARTED_ROLES = frozenset({"fork server", "worker", "resource tracker"})


def _guess_roles(procs: list[psutil.Process],
                 forked: Mapping[int, psutil.Process | None]) -> dict[int, str]:
    """Each process's role in the tree ``procs`` (its root first); ``forked``: pid ->
    the process it was forked from, or None.

    A Python process forked from its parent (:func:`_forked_from_parent`) is a worker,
    or a fork server if it forks copies of itself in turn; other processes are known by
    their command lines (``_ROLE_BY_COMMAND``); a process that started any of those is a
    parent; cowmp cannot tell the role of the others: "process"."""
    copies = {proc.pid for proc in procs if forked.get(proc.pid) is not None
              and _is_python(proc)}
    children: dict[int, list[int]] = {}
    for proc in procs:
        ppid = _ppid(proc)
        if ppid is not None:
            children.setdefault(ppid, []).append(proc.pid)
    roles: dict[int, str | None] = {}
    for proc in procs:
        if proc.pid in copies:
            forks = any(child in copies for child in children.get(proc.pid, ()))
            roles[proc.pid] = "fork server" if forks else "worker"
        else:
            roles[proc.pid] = _role_by_command(proc)
    return {pid: role or ("parent" if any(roles.get(child) in _STARTED_ROLES
                                          for child in children.get(pid, ()))
                          else "process")
            for pid, role in roles.items()}


def _is_python(proc: psutil.Process) -> bool:
    """Whether ``proc`` runs a Python interpreter (its executable's name says so)."""
    try:
        name = os.path.basename(proc.exe()).lower()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False
    return name.startswith(("python", "pypy"))


def _role_by_command(proc: psutil.Process) -> str | None:
    """The role that ``proc``'s command line shows, or None."""
    try:
        command = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for marker, role in _ROLE_BY_COMMAND:
        if marker in command:
            return role
    return None


def _ppid(proc: psutil.Process) -> int | None:
    try:
        return proc.ppid()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def processes(roles: Mapping[int, str]) -> list[ProcessMemory]:
    """The memory of each process of ``roles`` (pid -> role), in that order; processes
    that have ended meanwhile are left out."""
    rows = []
    for pid, role in roles.items():
        try:
            proc = _process(pid)
            rows.append(_read(proc, role, _forked_from_parent(proc)))
        except ProcessLookupError:
            continue
    return rows


def tree(pid: int | None = None, roles: Mapping[int, str] | None = None) -> list[ProcessMemory]:
    """The memory of ``pid`` (default: this process) and of all its descendants, the
    root first; each with its role (``roles`` first, else guessed: module docstring).
    Descendants that end during the reading are left out."""
    root = _process(pid)
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        raise ProcessLookupError(f"no process with pid {root.pid}") from None
    forked = {proc.pid: _forked_from_parent(proc) for proc in procs}
    given = {**_guess_roles(procs, forked), **(roles or {})}
    rows = []
    for proc in procs:
        try:
            rows.append(_read(proc, given[proc.pid], forked[proc.pid]))
        except ProcessLookupError:
            if proc is root:
                raise
    return rows


def totals(rows: Iterable[ProcessMemory]) -> dict[str, int | None]:
    """Sums over ``rows``.  Total PSS is what the processes cost together; total RSS
    counts each shared page once per process that maps it."""
    rows = list(rows)
    result: dict[str, int | None] = {
        field: sum(getattr(row, field) for row in rows)
        for field in ("rss", "uss", "shared", "swap")
    }
    result["pss"] = (None if any(row.pss is None for row in rows)
                     else sum(row.pss for row in rows if row.pss is not None))
    copied = [row.copied for row in rows if row.copied is not None]
    result["copied"] = sum(copied) if copied else None
    return result


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "kb": 10**3, "m": 1 << 20,
          "mib": 1 << 20, "mb": 10**6, "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
          "t": 1 << 40, "tib": 1 << 40, "tb": 10**12}


def parse_size(value: int | str, name: str = "size") -> int:
    """A positive number of bytes from an int or a string such as ``"512MiB"``,
    ``"1.5 GiB"``, ``"2GB"`` (powers of 1000) or ``"300M"`` (K, M, G, T: powers of 1024).
    ``name`` names the value in the error."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be a number of bytes (int) or a string such as "
                        f"'512MiB', not {type(value).__name__}")
    if isinstance(value, str):
        text = value.strip()
        number = text.rstrip("bBiIkKmMgGtT ")
        unit = text[len(number):].strip().lower()
        try:
            size = int(float(number) * _UNITS[unit])
        except (ValueError, KeyError, OverflowError):
            raise ValueError(f"{name}: cannot read {value!r} as a size (examples: "
                             "1000000, '512MiB', '1.5 GiB', '2GB', '300M')") from None
    else:
        size = value
    if size <= 0:
        raise ValueError(f"{name} must be positive, not {value!r}")
    return size
