"""The framed channel between an executor and its workers."""

from __future__ import annotations

import os
import socket
import threading
from multiprocessing.connection import Connection

import pytest

from cowmp.channel import _READ, Channel


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    ends = Channel(Connection(a.detach())), Channel(Connection(b.detach()))
    yield ends
    for end in ends:
        end.close()


def test_a_batch_goes_in_one_write_and_comes_back_whole(pair):
    left, right = pair
    left.send([b"one", (b"tw", b"o"), b"", (b"th", b"r", b"ee")])
    got = []
    while len(got) < 4:
        got.extend(right.receive())
    assert got == [b"one", b"two", b"", b"three"]
    assert not right.pending()


def test_receive_one_keeps_the_rest_for_later(pair):
    left, right = pair
    left.send([b"a", b"b", b"c"])
    assert right.receive_one() == b"a"
    assert right.pending()
    assert right.receive_one() == b"b"
    assert right.receive_one() == b"c"
    assert not right.pending()


def test_a_message_larger_than_a_read_arrives_whole(pair):
    left, right = pair
    big = os.urandom(3 * _READ + 123)
    writer = threading.Thread(target=left.send, args=([big, b"after"],))
    writer.start()
    assert right.receive_one() == big
    assert right.receive_one() == b"after"
    writer.join()


def test_plain_connection_framing_is_understood_both_ways():
    a, b = socket.socketpair()
    plain, channel = Connection(a.detach()), Channel(Connection(b.detach()))
    try:
        plain.send_bytes(b"from a Connection")
        assert channel.receive_one() == b"from a Connection"
        channel.send([(b"to a ", b"Connection")])
        assert plain.recv_bytes() == b"to a Connection"
    finally:
        plain.close()
        channel.close()


def test_a_message_cut_short_by_the_end_is_dropped_with_eof(pair):
    left, right = pair
    os.write(left.fd, b"\x00\x00\x00\x10short")  # announces 16 bytes, sends 5
    left.close()
    with pytest.raises(EOFError):
        right.receive()


def test_other_connections_are_used_a_message_at_a_time():
    class Pipe:
        def __init__(self):
            self.sent = []

        def send_bytes(self, data):
            self.sent.append(data)

        def recv_bytes(self):
            return self.sent.pop(0)

        def fileno(self):
            return -1

        def close(self):
            pass

    channel = Channel(Pipe())
    assert not channel.raw
    channel.send([b"x", (b"y", b"z")])
    assert channel.conn.sent == [b"x", b"yz"]
    assert channel.receive() == [b"x"]
    assert channel.receive_one() == b"yz"
