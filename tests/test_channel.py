"""The manager's non-blocking connections (:mod:`shmstore._channel`) against
multiprocessing.connection's own ends: whatever way the bytes arrive, the frames read
are the frames sent, and replies the socket cannot take yet arrive later, whole and in
order."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import threading
from multiprocessing.connection import Connection

import pytest

from shmstore._channel import SCRATCH_BYTES, Channel
from shmstore._errors import ProtocolError

LIMIT = 8 << 20


@pytest.fixture
def ends():
    """(channel, the client's Connection) over one socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = Channel(Connection(ours.detach()), os.getpid(), LIMIT, None)
    client = Connection(theirs.detach())
    yield channel, client
    channel.close()
    client.close()


def _receive(channel: Channel, client: Connection, wire: bytes, pieces: list[int]):
    """Write ``wire`` from the client's end in pieces of the given sizes (by a thread:
    the socket holds less than a long frame) and return the frames the channel reads,
    until the end of the stream."""
    scratch = memoryview(bytearray(SCRATCH_BYTES))

    def write() -> None:
        start = 0
        for n in pieces:
            os.write(client.fileno(), wire[start : start + n])  # blocks while full
            start += n
        client.close()

    writer = threading.Thread(target=write)
    writer.start()
    frames = []
    try:
        while True:
            ready, _, _ = select.select([channel], [], [], 30)
            assert ready, "the writer stopped without closing"
            got = channel.read_frames(scratch)
            if got is None:
                return frames
            frames += got
    finally:
        writer.join()


def _pieces(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _wire(payloads: list[bytes]) -> bytes:
    """The bytes Connection.send_bytes writes for each payload, in turn."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender = Connection(a.detach())

    def send() -> None:
        for payload in payloads:
            sender.send_bytes(payload)
        sender.close()

    thread = threading.Thread(target=send)
    thread.start()
    with b:
        data = b""
        while chunk := b.recv(1 << 20):
            data += chunk
    thread.join()
    return data


PAYLOADS = [b"", b"x", os.urandom(16384), os.urandom(16385), os.urandom(100_000), b"yz"]


@pytest.mark.parametrize("piece", [1, 3, 4097, 1 << 16, 1 << 22], ids=lambda n: f"{n}B")
def test_frames_are_read_back_however_the_bytes_arrive(ends, piece):
    channel, client = ends
    wire = _wire(PAYLOADS)
    assert _receive(channel, client, wire, _pieces(len(wire), piece)) == PAYLOADS


def test_a_frame_longer_than_the_scratch_buffer_is_read_whole(ends):
    channel, client = ends
    payload = os.urandom(3 * SCRATCH_BYTES + 5)
    wire = _wire([payload, b"after"])
    rng = random.Random(7)
    pieces = []
    while sum(pieces) < len(wire):
        pieces.append(min(rng.randint(1, 2 * SCRATCH_BYTES), len(wire) - sum(pieces)))
    assert _receive(channel, client, wire, pieces) == [payload, b"after"]


def test_the_long_form_of_the_length_prefix_is_read(ends):
    # Connection.send_bytes uses it for payloads over 2 GiB; any length may take it.
    channel, client = ends
    scratch = memoryview(bytearray(SCRATCH_BYTES))
    os.write(client.fileno(), struct.pack("!iQ", -1, 5) + b"hello")
    assert channel.read_frames(scratch) == [b"hello"]


@pytest.mark.parametrize(
    "prefix",
    [struct.pack("!i", LIMIT + 1), struct.pack("!i", -2), struct.pack("!iQ", -1, 1 << 62)],
    ids=["over-the-limit", "negative", "long-form-huge"],
)
def test_a_bad_length_raises_before_any_of_its_frame_is_kept(ends, prefix):
    channel, client = ends
    scratch = memoryview(bytearray(SCRATCH_BYTES))
    os.write(client.fileno(), prefix + b"x" * 10)
    with pytest.raises(ProtocolError, match="bytes"):
        channel.read_frames(scratch)


def test_the_end_of_the_stream_is_none_even_mid_frame(ends):
    channel, client = ends
    scratch = memoryview(bytearray(SCRATCH_BYTES))
    os.write(client.fileno(), struct.pack("!i", 100) + b"only part")
    assert channel.read_frames(scratch) == []
    client.close()
    assert channel.read_frames(scratch) is None


def test_replies_the_socket_cannot_take_yet_arrive_later_in_order(ends):
    channel, client = ends
    replies = [os.urandom(3 << 20), b"small", os.urandom(1 << 20)]
    for reply in replies:
        channel.send(reply)
    assert channel.backed_up  # 4 MiB is more than a unix socket buffers
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(client.recv_bytes() for _ in replies))
    reader.start()
    try:
        while channel.backed_up:
            _, writable, _ = select.select([], [channel], [], 30)
            assert writable, "the reader stopped reading"
            channel.flush()
    finally:
        reader.join()
    assert received == replies


def test_a_reply_that_fits_is_sent_at_once(ends):
    channel, client = ends
    channel.send(b"ok")
    assert not channel.backed_up
    assert client.recv_bytes() == b"ok"


def test_sending_to_a_closed_peer_raises_oserror(ends):
    channel, client = ends
    client.close()
    with pytest.raises(OSError):
        for _ in range(10):  # the first may be buffered before the reset is known
            channel.send(b"x" * 100_000)
            channel.flush()
