"""Launching one cowfork child: fork with the protocol, bootstrap, leave through ``os._exit``.

This is ``multiprocessing.popen_fork.Popen`` (waiting, polling, terminate/kill/interrupt,
sentinels and exit codes are inherited unchanged, so a signal death reads ``-signum``)
with two differences: the fork is :func:`cowmp.forking.protocol_fork`, and the child
leaves through :func:`cowmp.exiting.finish_like_interpreter_exit` (its ``atexit``
handlers, then ``os._exit``).  ``Process._bootstrap`` gives the exit codes of
the standard library: return → 0, ``sys.exit(n)`` → n, an uncaught exception → 1 with its
traceback printed.  multiprocessing's finalizers run and the child's own children are
joined before we leave (in ``_bootstrap`` up to 3.12, through ``atexit`` since 3.13, as
the standard fork launcher of each version does); the ``atexit`` handlers the child
registered run too, the parent's never.
"""

from __future__ import annotations

import atexit
import os
import sys
from multiprocessing import popen_fork, util

from . import exiting, forking

__all__ = ["Popen"]

#: 3.13+: the fork child runs util._exit_function through atexit, not in _bootstrap.
_EXIT_FUNCTION_IN_ATEXIT = sys.version_info >= (3, 13)


class Popen(popen_fork.Popen):
    method = "cowfork"

    def _launch(self, process_obj):  # type: ignore[no-untyped-def]
        code = 1
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            self.pid = forking.protocol_fork(bare=False)
        except BaseException:
            for fd in (parent_r, child_w, child_r, parent_w):
                os.close(fd)
            raise
        if self.pid == 0:
            try:
                # The parent's atexit handlers are not the child's; those the child
                # registers run when it leaves.  3.13+ moved multiprocessing's own exit
                # function (finalizers, joining the child's children, flushing queue
                # feeders) out of _bootstrap into this atexit pass.
                atexit._clear()
                if _EXIT_FUNCTION_IN_ATEXIT:
                    atexit.register(util._exit_function)
                os.close(parent_r)
                os.close(parent_w)
                code = process_obj._bootstrap(parent_sentinel=child_r)
            finally:
                exiting.finish_like_interpreter_exit(code)
        else:
            os.close(child_w)
            os.close(child_r)
            self.finalizer = util.Finalize(self, util.close_fds, (parent_r, parent_w))
            self.sentinel = parent_r
