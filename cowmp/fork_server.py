"""The fork server: where an executor's workers are forked (docs/design.md §7).

Forked once from the parent when the executor is created (the snapshot), it holds the
parent's heap, frozen, and runs no thread.  On the parent's request it forks a worker
(through :func:`cowmp.forking.protocol_fork`, the one place cowmp forks), hands it the
connection the parent made for it, reaps it when it ends and reports its exit status.
Workers can thus be replaced at any time (crash, timeout, ``max_tasks_per_child``)
without forking from the parent, whose executor runs a thread, and still share the
snapshot.

Commands (parent -> server, on a stream socket; a worker's socket travels with SPAWN as
``SCM_RIGHTS``): :data:`SPAWN` slot and the worker's number (its name), :data:`KILL` pid,
:data:`STOP` and how (let the workers leave, or terminate or kill them now).  Events
(server -> parent, on a pipe): ``("spawned", slot, pid)``, ``("exited", pid, exit_code)``
where exit_code is ``-signum`` for a signal death, as in multiprocessing.

If the parent dies, the server kills its workers and exits (it notices the closed socket
or, within 0.25 s, its new parent process id); each worker dies with the server (Linux:
``PR_SET_PDEATHSIG``; elsewhere a watchdog thread in the worker).

With a ``loader`` (``CowProcessPoolExecutor(loader=...)``) the server is not forked from
the parent but started as a new interpreter (:func:`serve_in_new_interpreter`): it
inherits no thread and nothing of the parent's heap, imports the main script as a spawned
process does, runs the loader once (:func:`cowmp.sharing.load`: what it returns is
shared, and is :func:`cowmp.loaded` in every worker), then forks every worker from that
state.  Its workers are then not copies of the parent: they send and receive by value,
as spawned workers do.  The slot array is then a file both map
(:func:`cowmp.slots.file_backed`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing import spawn
from multiprocessing.connection import Connection, Pipe
from typing import Any, NoReturn

from . import exiting, forking, handles, serialize, sharing, slots, worker
from .launchers import LEAVE, TERMINATE_GRACE, Event

__all__ = ["ForkServer", "serve_in_new_interpreter"]

SPAWN, KILL, STOP = 1, 2, 3
_COMMAND = struct.Struct("!iqq")
_LENGTH = struct.Struct("!Q")  # of the set-up message a new-interpreter server reads first
#: seconds the server gives its workers to leave after STOP before killing them
STOP_GRACE = 5.0


class ForkServer:
    """The parent's handle on a fork server (a :class:`cowmp.launchers.Launcher`)."""

    def __init__(self, slot_array: Any, initializer: Any, initargs: tuple,
                 max_tasks: int | None, method: str | None = None, workers: int = 0,
                 loader: tuple | None = None, slot_fd: int | None = None) -> None:
        """Fork the server, which forks ``workers`` workers (slots 0 to workers - 1) as
        soon as it starts: their connections are made here and inherited, so that no
        request has to reach it first (:meth:`spawn` hands out the parent's ends).
        ``loader``: ``(callable, args)``: start the server as a new interpreter that
        loads the data itself (module docstring); ``slot_fd`` is then the file behind
        ``slot_array``, passed to it."""
        self.spawned = workers
        self.initial: dict[int, Connection] = {}
        self.process: subprocess.Popen | None = None
        self.exitcode: int | None = None
        if loader is not None:
            assert slot_fd is not None
            self._start_interpreter(initializer, initargs, max_tasks, method, workers,
                                    loader, slot_fd)
            return
        parent = os.getpid()
        # the server's ends are opened and inherited by the server under the registry's
        # lock, unregistered: no other fork takes them, and the server keeps them
        with forking.quiesced():
            with self._channels(workers) as (server_commands, server_events, theirs):
                pid = forking.protocol_fork(bare=True)
            if pid:
                for handle in (server_commands, server_events, *theirs):
                    handle.close()
        if pid == 0:
            # the server (the fork closed every registered handle), out of the section
            # above: it must not hold its locks, nor may the workers it forks
            _serve_then_leave(lambda: _Server(
                server_commands, server_events, parent, slot_array, initializer, initargs,
                max_tasks, method, [their.detach() for their in theirs]).serve())
        self.pid = pid

    @contextlib.contextmanager
    def _channels(self, workers: int) -> Iterator[tuple[socket.socket, Connection, list]]:
        """Open the command socket, the event pipe and the first workers' sockets (under
        the registry's lock, held by the caller); yield the server's ends.  If the block
        fails, every one of them is closed."""
        self.commands, server_commands = socket.socketpair(socket.AF_UNIX,
                                                           socket.SOCK_STREAM)
        self.events, server_events = Pipe(duplex=False)
        handles.opened(self.commands, self.events)
        theirs: list[socket.socket] = []
        try:
            for slot in range(workers):
                ours, their = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                theirs.append(their)
                self.initial[slot] = Connection(ours.detach())
                handles.opened(self.initial[slot])
            yield server_commands, server_events, theirs
        except BaseException:
            handles.close(self.commands, self.events, server_commands, server_events,
                          *theirs, *self.initial.values())
            raise

    def _start_interpreter(self, initializer: Any, initargs: tuple, max_tasks: int | None,
                           method: str | None, workers: int, loader: tuple,
                           slot_fd: int) -> None:
        """Start the server as a new interpreter (no fork of this process: safe whatever
        threads run here) and send it what it needs on its command socket."""
        setup = serialize.dumps((initializer, initargs, max_tasks, method, *loader),
                                serialize.Snapshot.take(by_reference=False),
                                "the executor's loader, initializer or their arguments")
        preparation = spawn.get_preparation_data("CowForkServer")
        preparation["authkey"] = bytes(preparation["authkey"])
        message = pickle.dumps((preparation, os.getpid(), workers, setup))
        with handles.lock:  # no fork may take the server's ends meanwhile
            with self._channels(workers) as (server_commands, server_events, theirs):
                try:
                    fds = [server_commands.fileno(), server_events.fileno(), slot_fd,
                           *(their.fileno() for their in theirs)]
                    command = spawn.get_command_line()
                    command = [*command[:command.index("-c")], "-c", _SERVE, *map(str, fds)]
                    self.process = subprocess.Popen(command, pass_fds=fds,
                                                    env=_environment(loader[0]))
                finally:
                    os.close(slot_fd)
            for handle in (server_commands, server_events, *theirs):
                handle.close()
        self.pid = self.process.pid
        try:
            self.commands.sendall(_LENGTH.pack(len(message)) + message)
        except OSError:
            pass  # it died at once: its end is seen as any other's

    def spawn(self, slot: int) -> Connection:
        """Ask for a worker in ``slot``; return the parent's end of its connection."""
        if slot in self.initial:  # forked by the server as it started
            return self.initial.pop(slot)
        self.spawned += 1
        with handles.lock:  # no fork may take ``theirs``: it is the worker's alone
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                socket.send_fds(self.commands, [_COMMAND.pack(SPAWN, slot, self.spawned)],
                                [theirs.fileno()])
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            conn = Connection(ours.detach())
            handles.opened(conn)
        return conn

    def kill(self, pid: int) -> None:
        self.commands.sendall(_COMMAND.pack(KILL, pid, 0))

    def pending_event(self) -> Event | None:
        return None  # every event comes through the events pipe

    def read_event(self, ready: Any) -> Event:
        return self.events.recv()

    def waitables(self) -> list:
        return [self.events]

    def disown(self) -> None:
        """In a forked child: nothing to do (the server is not a multiprocessing child)."""

    def stop(self, how: int = LEAVE, timeout: float = STOP_GRACE + 2) -> None:
        """Let the server end and reap it: its workers leave on their own (``LEAVE``), or
        it ends them now with ``TERMINATE`` (SIGTERM) or ``KILL_NOW`` (SIGKILL)."""
        try:
            self.commands.sendall(_COMMAND.pack(STOP, int(how), 0))
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        ending = False  # its events pipe closed: only its exit is left
        while self.exit_status() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(self.pid, signal.SIGKILL)
                deadline = float("inf")
            elif ending:
                time.sleep(0.0005)
            else:
                try:  # events that nobody reads any more, until the end of the pipe
                    if self.events.poll(min(left, 0.1)):
                        self.events.recv_bytes()
                except (EOFError, OSError):
                    ending = True
        handles.close(self.commands, self.events, *self.initial.values())
        self.initial.clear()

    def exit_status(self) -> int | None:
        if self.process is not None:
            return self.process.poll()
        if self.exitcode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # SIGCHLD ignored: the system reaped it
                try:
                    os.kill(self.pid, 0)
                    return None
                except ProcessLookupError:
                    self.exitcode = 0  # its status is lost; it is gone
                    return self.exitcode
            if pid:
                self.exitcode = os.waitstatus_to_exitcode(status)
        return self.exitcode


class _Server:
    """The server's side: a single-threaded loop."""

    def __init__(self, commands: socket.socket, events: Connection, parent: int,
                 slot_array: Any, initializer: Any, initargs: tuple,
                 max_tasks: int | None, method: str | None, initial: list[int],
                 by_reference: bool = True) -> None:
        self.pid = os.getpid()
        self.by_reference = by_reference  # the workers are copies of the parent
        self.commands = commands
        self.initial = initial  # the first workers' connections, by slot
        self.events = events
        self.parent = parent
        self.slot_array = slot_array
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.method = method
        self.children: dict[int, int] = {}  # pid -> slot
        self.buffer = b""
        self.fds: list[int] = []

    def serve(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
        worker.prepare_parent_watch()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        self.wake = (wake_r, wake_w)
        self.spawn_initial()
        stopping: float | None = None
        try:
            while True:
                ready, _, _ = select.select([self.commands, wake_r], [], [], 0.25)
                if wake_r in ready:
                    os.read(wake_r, 4096)
                self.reap()
                if os.getppid() != self.parent:
                    return  # the parent died
                if self.commands in ready and not self.read_commands():
                    return  # the parent closed its end: it died or gave up on us
                if self.stop_requested and stopping is None:
                    stopping = time.monotonic() + STOP_GRACE
                    if self.stop_signal:
                        self.kill_all(self.stop_signal)
                        stopping = time.monotonic() + TERMINATE_GRACE
                if stopping is not None:
                    if not self.children:
                        return
                    if time.monotonic() > stopping:
                        self.kill_all()
        finally:
            self.kill_all()
            while self.children:
                self.reap(block=True)

    stop_requested = False
    stop_signal = LEAVE

    def read_commands(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.commands, 4096, 64)
        self.fds.extend(fds)
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= _COMMAND.size:
            op, arg, extra = _COMMAND.unpack_from(self.buffer)
            self.buffer = self.buffer[_COMMAND.size:]
            if op == SPAWN:
                self.spawn(arg, extra, self.fds.pop(0))
            elif op == KILL:
                if arg in self.children:
                    os.kill(arg, signal.SIGKILL)
            elif op == STOP:
                self.stop_requested = True
                self.stop_signal = arg
        return True

    def spawn(self, slot: int, number: int, fd: int) -> None:
        pid = forking.protocol_fork(bare=True, collect=False)
        if pid == 0:
            self.become_worker(slot, number, fd)
        self.spawned(slot, pid, fd)

    def spawn_initial(self) -> None:
        """Fork the first workers one right after the other (their connections were
        inherited from the parent); their slots and numbers follow their order."""
        fds, self.initial = self.initial, []
        if not fds:
            return
        index, pids = forking.fork_children(len(fds), bare=True,
                                            collect=False)
        if index >= 0:
            self.initial = fds  # closed in the worker, but for its own
            self.become_worker(index, index + 1, fds[index])
        for slot, fd in enumerate(fds):
            if slot < len(pids):
                self.spawned(slot, pids[slot], fd)
            else:  # not forked: the parent sees its connection end, and asks again
                os.close(fd)

    def become_worker(self, slot: int, number: int, fd: int) -> NoReturn:
        """In a worker just forked: drop the server's handles, run the worker."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for handle in (*self.wake, *self.fds, *self.initial):
                if handle != fd:
                    os.close(handle)
            self.commands.close()
            self.events.close()
            conn = Connection(fd)
        except BaseException:  # noqa: BLE001
            exiting.leave(1)
        worker.run_worker(conn, slot, self.slot_array, self.pid, self.initializer,
                          self.initargs, self.max_tasks, name=f"CowPoolWorker-{number}",
                          owner=self.parent, method=self.method,
                          by_reference=self.by_reference)
        exiting.leave(1)  # run_worker never returns

    def spawned(self, slot: int, pid: int, fd: int) -> None:
        os.close(fd)  # the worker's now
        self.children[pid] = slot
        self.send(("spawned", slot, pid))

    def send(self, event: tuple) -> None:
        try:
            self.events.send(event)
        except OSError:
            pass  # the parent is gone; the loop notices

    def reap(self, block: bool = False) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if not pid:
                return
            if self.children.pop(pid, None) is not None:
                self.send(("exited", pid, os.waitstatus_to_exitcode(status)))
            if block:
                return

    def kill_all(self, signum: int = signal.SIGKILL) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _serve_then_leave(serve: Callable[[], object]) -> NoReturn:
    """End a fork server's process once ``serve()`` returns (status 0) or raises (the
    traceback printed, status 1)."""
    code = 1
    try:
        serve()
        code = 0
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
    finally:
        exiting.leave(code)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the executor's process closed the fork server's socket")
        data += chunk
    return data


def _environment(loader: Any) -> dict[str, str] | None:
    """The new interpreter's environment: this process's, where a loader that has
    ``environ_defaults`` (a dict) fills the variables this process does not set, which
    the interpreter needs before it imports anything (the Dask plugin's loader: the
    thread counts Dask's nanny gives its workers).  None: this process's as it is."""
    defaults = getattr(loader, "environ_defaults", None)
    return {**defaults, **os.environ} if defaults else None


#: the new interpreter's program: this very cowmp first (the parent may have found it
#: through a sys.path of its own, which spawn.prepare() applies only once cowmp runs)
_SERVE = (f"import sys; sys.path.insert(0, "
          f"{os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r}); "
          "from cowmp.fork_server import serve_in_new_interpreter as serve; serve()")


def serve_in_new_interpreter() -> NoReturn:
    """The entry point of a fork server started as a new interpreter (its arguments: the
    descriptors of its command socket, its event pipe, the slot file and the first
    workers' sockets).  Reads its set-up, prepares as a spawned process does (paths,
    main module), runs the loader, and serves."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    commands_fd, events_fd, slot_fd, *initial = map(int, sys.argv[1:])
    commands = socket.socket(fileno=commands_fd)
    events = Connection(events_fd, readable=False)

    def load_then_serve() -> None:
        size = _LENGTH.unpack(_read_exactly(commands, _LENGTH.size))[0]
        preparation, parent, workers, setup = pickle.loads(_read_exactly(commands, size))
        spawn.prepare(preparation)
        initializer, initargs, max_tasks, method, loader, loader_args = serialize.loads(setup)
        slot_array = slots.attach(slot_fd, workers)
        os.close(slot_fd)
        try:
            sharing.load(loader, loader_args)
        except BaseException as error:  # noqa: BLE001 - the parent is told, then it ends
            events.send(("broken", f"the executor's loader "
                         f"{serialize.short_repr(loader)} failed in the fork server: "
                         f"{serialize.describe(error)}"))
            raise
        _Server(commands, events, parent, slot_array, initializer, initargs, max_tasks,
                method, initial, by_reference=False).serve()

    _serve_then_leave(load_then_serve)
