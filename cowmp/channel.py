"""A worker's connection, for many small messages: several in one write, and every
message that has arrived in one read.

Messages are framed as :class:`multiprocessing.connection.Connection` frames them (a
big-endian length before each), so either end may also be a plain ``Connection``.  On
POSIX the channel reads and writes the connection's file descriptor itself: one system
call moves a batch of pieces to a worker (gathered from their parts, not copied into one
buffer), or every result that is waiting (read into a buffer kept for the purpose, each
message copied out once), where a ``Connection`` makes two calls per message and wakes
the other side for each.  Elsewhere (Windows pipes) it falls back to the
``Connection``, a message at a time.

:class:`Waiter` waits on many connections at once for the executor's manager thread.
"""

from __future__ import annotations

import os
import select
import selectors
import struct
from collections.abc import Sequence
from multiprocessing import connection
from typing import Any

from . import handles

__all__ = ["Channel", "Message", "Waiter"]

#: a message: bytes, or the parts it is made of, sent one after the other
Message = bytes | Sequence[bytes]

_SIZE = struct.Struct("!i")
_LONG_SIZE = struct.Struct("!Q")
_LONG = 0x7FFFFFFF  # longer messages: -1, then the size in 8 bytes
_READ = 1 << 18  # bytes asked for by one read
_MAX_PARTS = 512  # parts in one write (the system's limit is at least 1024)


def _parts(message: Message) -> Sequence[bytes]:
    return (message,) if isinstance(message, (bytes, bytearray, memoryview)) else message


def _header(size: int) -> bytes:
    return _SIZE.pack(size) if size <= _LONG else _SIZE.pack(-1) + _LONG_SIZE.pack(size)


class Channel:
    """Framed messages over ``conn``: ``send`` a batch, ``receive`` what has arrived."""

    def __init__(self, conn: Any, nonblocking: bool = False) -> None:
        """``nonblocking``: ``receive`` returns what has arrived, nothing if nothing has
        (a wake-up that finds no data costs a call, never a hang); ``send`` still waits
        until all is written.  POSIX only."""
        self.conn = conn
        self.raw = os.name == "posix" and isinstance(conn, connection.Connection)
        self.fd = conn.fileno() if self.raw else -1
        self.nonblocking = nonblocking and self.raw
        if self.nonblocking:
            os.set_blocking(self.fd, False)
        self.area = bytearray()  # what a read fills (made at the first read: a worker's
        # channel in the parent of a short-lived executor may never need it)
        self.buffer = bytearray()  # the start of a message that has not all arrived
        self.ready: list[bytes] = []  # whole messages read, not yet taken

    def close(self) -> None:
        self.conn.close()

    def send(self, messages: list[Message]) -> None:
        """Send the messages, all in one write where the connection allows."""
        if not self.raw:
            for message in messages:
                self.conn.send_bytes(b"".join(_parts(message)))
            return
        vector: list[bytes] = []
        for message in messages:
            parts = _parts(message)
            vector.append(_header(sum(map(len, parts))))
            vector.extend(parts)
        for start in range(0, len(vector), _MAX_PARTS):
            self._write(vector[start:start + _MAX_PARTS])

    def _write(self, vector: list[bytes]) -> None:
        total = sum(map(len, vector))
        try:
            written = os.writev(self.fd, vector)
        except BlockingIOError:
            written = 0
        if written == total:
            return
        rest = memoryview(b"".join(vector))[written:]  # a full socket: rare
        while rest:
            try:
                rest = rest[os.write(self.fd, rest):]
            except BlockingIOError:
                select.select([], [self.fd], [])

    def pending(self) -> bool:
        """Is a whole message already read, so that ``receive`` will not block?"""
        return bool(self.ready)

    def receive(self) -> list[bytes]:
        """The messages that have arrived: at least one (blocks until one is whole), or,
        ``nonblocking``, perhaps none; EOFError when the other end closed (a message cut
        short is dropped)."""
        if not self.raw:
            return [self.conn.recv_bytes()]
        while not self.ready:
            if not self._read():
                break
        messages, self.ready = self.ready, []
        return messages

    def receive_one(self) -> bytes:
        """The next message (blocks until it is whole); the rest stays buffered."""
        if not self.raw:
            return self.conn.recv_bytes()
        while not self.ready:
            self._read()
        return self.ready.pop(0)

    def drain(self) -> list[bytes]:
        """Every whole message that has arrived, without waiting for more."""
        if not self.raw:
            while self.conn.poll(0):
                self.ready.append(self.conn.recv_bytes())
        else:
            while select.select([self.fd], [], [], 0)[0] and self._read():
                pass
        messages, self.ready = self.ready, []
        return messages

    def _read(self) -> bool:
        """Read what is there (False: nothing yet, ``nonblocking``)."""
        if not self.area:
            self.area = bytearray(_READ)
        try:
            count = os.readv(self.fd, [self.area])
        except BlockingIOError:
            return False
        if not count:
            raise EOFError
        if self.buffer:  # the rest of a message begun earlier
            self.buffer += memoryview(self.area)[:count]
            used = self._split(self.buffer, len(self.buffer))
            if used:
                del self.buffer[:used]
        else:
            used = self._split(self.area, count)
            if used < count:
                self.buffer += memoryview(self.area)[used:count]
        return True

    def _split(self, data: bytearray, end: int) -> int:
        """Take the whole messages at the start of ``data[:end]``; return their length."""
        ready = self.ready
        position = 0
        with memoryview(data) as view:
            while True:
                available = end - position
                if available < 4:
                    break
                size = _SIZE.unpack_from(data, position)[0]
                head = 4
                if size == -1:
                    if available < 12:
                        break
                    size = _LONG_SIZE.unpack_from(data, position + 4)[0]
                    head = 12
                if available < head + size:
                    break
                ready.append(bytes(view[position + head:position + head + size]))
                position += head + size
        return position


class Waiter:
    """``multiprocessing.connection.wait`` with a persistent selector where there is one
    (POSIX): registrations change only when the set of connections does.  A connection
    is unregistered (:meth:`forget`) before it is closed: the kernel's epoll set would
    otherwise keep it while a forked process holds a copy."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector() if os.name == "posix" else None
        if self.selector is not None:
            handles.opened(self.selector)
        self.registered: dict[Any, int] = {}

    def wait(self, objects: list, timeout: float | None) -> list:
        if self.selector is None:  # pragma: no cover - Windows
            return connection.wait(objects, timeout)
        wanted = set(objects)
        for obj in [o for o in self.registered if o not in wanted]:
            self.forget(obj)
        for obj in objects:
            if obj not in self.registered:
                fd = int(obj) if isinstance(obj, int) else obj.fileno()
                self.selector.register(fd, selectors.EVENT_READ, obj)
                self.registered[obj] = fd
        return [key.data for key, _ in self.selector.select(timeout)]

    def forget(self, obj: Any) -> None:
        fd = self.registered.pop(obj, None)
        if fd is not None and self.selector is not None:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def close(self) -> None:
        handles.close(self.selector)
