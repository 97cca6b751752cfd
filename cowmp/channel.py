"""A worker's connection, for many small messages: several in one write, and every
message that has arrived in one read.

Messages are framed as :class:`multiprocessing.connection.Connection` frames them (a
big-endian length before each), so either end may also be a plain ``Connection``.  On
POSIX the channel reads and writes the connection's file descriptor itself: one system
call moves a batch of pieces to a worker, or every result that is waiting, where a
``Connection`` makes two calls per message (and wakes the other side for each).
Elsewhere (Windows pipes) it falls back to the ``Connection``, a message at a time.
"""

from __future__ import annotations

import os
import struct
from multiprocessing import connection
from typing import Any

__all__ = ["Channel"]

_SIZE = struct.Struct("!i")
_LONG_SIZE = struct.Struct("!Q")
_LONG = 0x7FFFFFFF  # longer messages: -1, then the size in 8 bytes
_READ = 1 << 18  # bytes asked for by one read


def frame(payload: bytes) -> bytes:
    """``payload`` with the length prefix that ``Connection.recv_bytes`` expects."""
    size = len(payload)
    if size > _LONG:
        return _SIZE.pack(-1) + _LONG_SIZE.pack(size) + payload
    return _SIZE.pack(size) + payload


class Channel:
    """Framed messages over ``conn``: ``send`` a batch, ``receive`` what has arrived."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.raw = os.name == "posix" and isinstance(conn, connection.Connection)
        self.fd = conn.fileno() if self.raw else -1
        self.buffer = bytearray()
        self.start = 0  # where the first unread message of ``buffer`` begins

    def fileno(self) -> int:
        return self.conn.fileno()

    def close(self) -> None:
        self.conn.close()

    def send(self, payloads: list[bytes]) -> None:
        """Send the messages, all in one write where the connection allows."""
        if not self.raw:
            for payload in payloads:
                self.conn.send_bytes(payload)
            return
        data = frame(payloads[0]) if len(payloads) == 1 else b"".join(map(frame, payloads))
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def pending(self) -> bool:
        """Is a whole message already read, so that ``receive`` will not block?"""
        return self._next_frame() is not None

    def receive(self) -> list[bytes]:
        """The messages that have arrived, at least one (blocks until one is whole);
        EOFError when the other end closed (a message cut short is dropped)."""
        if not self.raw:
            return [self.conn.recv_bytes()]
        messages = self._parse()
        while not messages:
            data = os.read(self.fd, _READ)
            if not data:
                raise EOFError
            self.buffer += data
            messages = self._parse()
        return messages

    def receive_one(self) -> bytes:
        """The next message (blocks until it is whole); the rest stays buffered."""
        if not self.raw:
            return self.conn.recv_bytes()
        while True:
            found = self._next_frame()
            if found is not None:
                begin, end = found
                self.start = end
                message = bytes(self.buffer[begin:end])
                self._compact()
                return message
            data = os.read(self.fd, _READ)
            if not data:
                raise EOFError
            self.buffer += data

    def _next_frame(self) -> tuple[int, int] | None:
        buffer, start = self.buffer, self.start
        available = len(buffer) - start
        if available < 4:
            return None
        size = _SIZE.unpack_from(buffer, start)[0]
        head = 4
        if size == -1:
            if available < 12:
                return None
            size = _LONG_SIZE.unpack_from(buffer, start + 4)[0]
            head = 12
        if available < head + size:
            return None
        return start + head, start + head + size

    def _parse(self) -> list[bytes]:
        messages = []
        while True:
            found = self._next_frame()
            if found is None:
                break
            begin, end = found
            messages.append(bytes(self.buffer[begin:end]))
            self.start = end
        self._compact()
        return messages

    def _compact(self) -> None:
        if self.start == len(self.buffer):
            self.buffer.clear()
            self.start = 0
        elif self.start > _READ:
            del self.buffer[:self.start]
            self.start = 0
