"""The Launcher interface (cowmp.launchers) and its two implementations: ForkServer and
SpawnLauncher have every method of the Protocol with compatible parameters, and they
behave as it says with small real workers: a spawned worker starts (its "spawned"
event, then its READY message), kill() ends it (its "exited" event, -SIGKILL), and
stop(KILL_NOW) ends every worker and returns once they are gone."""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
from multiprocessing import connection, sharedctypes

import executor_support as support
import pytest
from conftest import gone, requires_fork

from cowmp import handles, slots, worker
from cowmp.channel import Channel, Waiter
from cowmp.fork_server import ForkServer
from cowmp.launchers import KILL_NOW, Launcher
from cowmp.spawn_launcher import SpawnLauncher

no_leftovers = support.no_leftovers

IMPLEMENTATIONS = [ForkServer, SpawnLauncher]


def _protocol_methods():
    return {name: value for name, value in vars(Launcher).items()
            if inspect.isfunction(value) and not name.startswith("_")}


def test_the_protocol_declares_the_methods_the_pool_uses():
    assert {"spawn", "kill", "pending_event", "read_event", "waitables", "exit_status",
            "stop", "disown"} <= set(_protocol_methods())
    assert "pid" in Launcher.__annotations__


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=lambda cls: cls.__name__)
def test_an_implementation_has_every_method_of_the_protocol_with_compatible_parameters(
        implementation):
    for name, declared in _protocol_methods().items():
        method = getattr(implementation, name, None)
        assert inspect.isfunction(method), f"{implementation.__name__}.{name} is missing"
        wanted = list(inspect.signature(declared).parameters.values())[1:]  # not self
        given = list(inspect.signature(method).parameters.values())[1:]
        where = f"{implementation.__name__}.{name}{inspect.signature(method)}"
        # what the protocol's callers pass, positionally or by name, is accepted
        assert len(given) >= len(wanted), where
        for want, have in zip(wanted, given, strict=False):
            assert have.name == want.name, where
            assert have.kind in (have.POSITIONAL_OR_KEYWORD, have.POSITIONAL_ONLY), where
            assert have.kind == want.kind, where
            if want.default is not want.empty:  # optional in the protocol: optional here,
                assert have.default == want.default, where  # with the same default
        # and whatever it adds is optional
        for extra in given[len(wanted):]:
            assert extra.default is not extra.empty or extra.kind in (
                extra.VAR_POSITIONAL, extra.VAR_KEYWORD), where


def _next_event(launcher, waiter, timeout=60):
    """The launcher's next event, waiting on its waitables as the manager thread does
    (with a Waiter: a SpawnLauncher's sentinels are equal only to themselves)."""
    event = launcher.pending_event()
    if event is not None:
        return event
    ready = waiter.wait(launcher.waitables(), timeout)
    assert ready, f"no event within {timeout} s"
    return launcher.read_event(ready[0])


def _check_ready(conn):
    """The worker's first message on its connection: it started (no initializer)."""
    assert connection.wait([conn], 60), "the worker sent nothing"
    assert Channel(conn).receive_one() == worker.READY


def _exercise(launcher):
    """spawn, kill, spawn, stop(KILL_NOW): the events and the workers' ends."""
    conns = []
    waiter = Waiter()
    try:
        conns.append(launcher.spawn(0))
        kind, slot, first = _next_event(launcher, waiter)
        assert (kind, slot) == ("spawned", 0) and first != os.getpid()
        _check_ready(conns[0])
        launcher.kill(first)
        assert _next_event(launcher, waiter) == ("exited", first, -signal.SIGKILL)
        assert gone(first)
        conns.append(launcher.spawn(1))
        kind, slot, second = _next_event(launcher, waiter)
        assert (kind, slot) == ("spawned", 1) and second not in (first, os.getpid())
        _check_ready(conns[1])
        assert not gone(second)
    finally:
        waiter.close()
        launcher.stop(KILL_NOW)
        handles.close(*conns)
    assert gone(second)
    return first, second


@requires_fork
@pytest.mark.timeout(120)
def test_a_fork_server_spawns_kills_and_stops_its_workers():
    array = sharedctypes.RawArray("d", 2 * slots.SLOT_FIELDS)
    server = ForkServer(array, None, (), None, "cowfork", workers=1)
    assert isinstance(server.pid, int) and server.pid != os.getpid()
    assert server.exit_status() is None  # it runs
    _exercise(server)
    assert server.exit_status() is not None  # stopped and reaped
    assert gone(server.pid)


@pytest.mark.timeout(120)
def test_a_spawn_launcher_spawns_kills_and_stops_its_workers():
    ctx = multiprocessing.get_context("spawn")
    array = ctx.RawArray("d", 2 * slots.SLOT_FIELDS)
    launcher = SpawnLauncher(ctx, array, None, (), None)
    assert launcher.pid is None  # no process of its own
    assert launcher.exit_status() is None
    assert launcher.pending_event() is None and launcher.waitables() == []
    _exercise(launcher)
    assert launcher.waitables() == []  # every worker reaped
