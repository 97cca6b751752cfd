"""gunicorn server hooks: the copy-on-write protocol for a pre-fork web server.

gunicorn with ``--preload`` loads the application (a model, an index) once in its master
(the arbiter) and forks its workers from it.  Without help the workers' memory grows back
to a full copy: the collector and reference counts write into the pages they inherited,
and every worker exit (``max_requests``, a HUP reload, a restart) tears the inherited
heap down object by object.  These hooks, used as a configuration module::

    gunicorn -c python:cowmp.gunicorn --preload app:app

or added to a configuration file of one's own (its hooks keep running, see :func:`apply`):

* ``on_starting`` (in the arbiter): every fork of the arbiter follows cowmp's protocol
  (:func:`cowmp.install_fork_hooks`): the heap is frozen for the collector before it, the
  child re-enables its collector for the objects it makes.  It warns when the
  application is not preloaded: each worker would then load a copy of its own.
* ``worker_exit`` (in the worker, after gunicorn's own shutdown work: requests finished,
  the configuration's ``worker_exit`` run): the worker ends like the interpreter's exit
  with the same status (``atexit`` handlers run, logs flushed) but without tearing down
  the heap it inherited (:func:`cowmp.exiting.finish_like_interpreter_exit`).

What the application passes to :func:`cowmp.share` while it loads is immortal on 3.12+:
workers that read it copy none of it.  gunicorn itself is not imported here; the hooks
receive its objects.  docs/design.md §13 explains the protocol for servers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from . import exiting, forking

__all__ = ["HOOKS", "apply", "on_starting", "worker_exit"]

NOT_PRELOADED = (
    "cowmp.gunicorn: the application is not preloaded, so each worker loads a copy of "
    "its own and there is nothing to share; start gunicorn with --preload (or set "
    "preload_app = True)")


def on_starting(server: Any) -> None:
    """gunicorn's ``on_starting(server)``: make every fork of the arbiter follow the
    protocol; warn in gunicorn's log if the application is not preloaded."""
    forking.install_fork_hooks()
    if not server.cfg.preload_app:
        server.log.warning(NOT_PRELOADED)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit(server, worker)``: in the worker, end it now with the
    status of the ``SystemExit`` that gunicorn raised, without the heap's teardown.

    gunicorn also calls this hook in the arbiter for a worker that was already gone, and
    a worker that fails with another exception leaves through gunicorn's own path: both
    are left alone.
    """
    if worker.pid != os.getpid():
        return  # the arbiter, reporting a worker it found dead
    leaving = sys.exc_info()[1]
    if isinstance(leaving, SystemExit):
        exiting.finish_like_interpreter_exit(leaving.code)


#: the hooks cowmp sets, by gunicorn's setting name
HOOKS: dict[str, Callable[..., None]] = {"on_starting": on_starting,
                                         "worker_exit": worker_exit}


def _on_starting_then(own: Callable[[Any], object]) -> Callable[[Any], None]:
    def composed_on_starting(server: Any) -> None:
        on_starting(server)
        own(server)
    return composed_on_starting


def _worker_exit_after(own: Callable[[Any, Any], object]) -> Callable[[Any, Any], None]:
    def composed_worker_exit(server: Any, worker: Any) -> None:
        try:
            own(server, worker)
        finally:
            worker_exit(server, worker)
    return composed_worker_exit


_COMPOSERS: dict[str, Callable[[Callable[..., Any]], Callable[..., None]]] = {
    "on_starting": _on_starting_then, "worker_exit": _worker_exit_after}


def apply(config: MutableMapping[str, Any]) -> None:
    """Add cowmp's hooks to a gunicorn configuration file's namespace: call
    ``cowmp.gunicorn.apply(globals())`` at its end.

    A hook the file defines already keeps running: its ``on_starting`` after cowmp's,
    its ``worker_exit`` before cowmp ends the worker (even if it raises: gunicorn logs
    that and goes on the same way).  Calling it twice changes nothing.
    """
    for name, ours in HOOKS.items():
        own = config.get(name)
        if own is ours or getattr(own, "__cowmp_hook__", False):
            continue  # applied already
        if own is None:
            config[name] = ours
            continue
        if not callable(own):
            raise TypeError(f"cowmp.gunicorn.apply(): the configuration's {name} is "
                            f"{type(own).__name__}, not a function")
        composed = _COMPOSERS[name](own)
        composed.__cowmp_hook__ = True  # type: ignore[attr-defined]
        config[name] = composed
