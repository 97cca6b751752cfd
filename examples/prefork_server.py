"""A pre-forking server that calls os.fork() itself (like gunicorn), made copy-on-write friendly.

``cowmp.install_fork_hooks()`` makes every ``os.fork()`` in the process freeze the heap
before the fork and re-enable the collector in the child; workers that leave through the
normal exit keep their inherited data alive instead of tearing it down page by page.  A
worker stopped by SIGTERM leaves through ``cowmp.exit()``.

Run: python examples/prefork_server.py
"""

import os
import signal
import sys
import time

import cowmp

cowmp.install_fork_hooks()

ROUTES = {f"/item/{i}": f"item {i}".encode() for i in range(100_000)}  # preloaded


def serve_forever(worker_id, ready):
    signal.signal(signal.SIGTERM, lambda sig, frame: cowmp.exit(0))
    os.write(ready, str(worker_id).encode())
    while True:
        time.sleep(0.1)


def main():
    ready_r, ready_w = os.pipe()
    workers = []
    for worker_id in range(3):
        pid = os.fork()                     # the server's own fork: hooks apply
        if pid == 0:
            serve_forever(worker_id, ready_w)
        workers.append(pid)
    seen = b""
    while len(seen) < len(workers):
        seen += os.read(ready_r, 16)
    for pid in workers:                     # graceful shutdown
        os.kill(pid, signal.SIGTERM)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in workers]
    print("workers exited with", codes)
    return 0 if codes == [0, 0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
