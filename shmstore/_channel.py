"""One client connection of the manager, read and written without blocking.

The manager serves every connection from one thread (its event loop, see
:mod:`shmstore._manager`): a thread per connection spent the CPU that several writers
needed on handing the GIL and the table lock to each other (manager CPU per batch of
64 overwrites of 1.5 kB, four writers: 93-125 µs with threads, 82-92 µs with one
loop; one writer: 80 µs either way). So a connection's frames cannot be read with
:meth:`multiprocessing.connection.Connection.recv_bytes`, which blocks until a whole
frame is in; :class:`Channel` reads whatever has arrived and hands over the frames it
completes, and queues what the socket cannot take yet.

The frames are multiprocessing.connection's, so that clients keep using its
``send_bytes`` and ``recv_bytes``: a 4-byte big-endian signed length and the payload,
or, for payloads of 2 GiB and more, the length -1 followed by an 8-byte unsigned one.
A length over the limit or negative (other than -1) is a broken client: the channel
reports it, and nothing of that frame is read or applied.
"""

from __future__ import annotations

import collections
import itertools
import os
import struct

from ._errors import ProtocolError

TYPE_CHECKING = False  # typing for the type checker only (the manager's memory)
if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from typing import Any

__all__ = ["SCRATCH_BYTES", "Channel", "frame_header"]

#: Bytes read from a socket at once into the loop's scratch buffer: a whole batch of
#: 64 embeddings (100 kB) arrives in one ``readv``.
SCRATCH_BYTES = 1 << 18

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_LONG = 0x7FFFFFFF  # payloads longer than this use the 12-byte form
_IOV = 64  # buffers per writev, well under IOV_MAX


def frame_header(n: int) -> bytes:
    """The length prefix of a payload of ``n`` bytes, as ``Connection.send_bytes``
    writes it."""
    if n > _LONG:
        return _LENGTH.pack(-1) + _LONG_LENGTH.pack(n)
    return _LENGTH.pack(n)


class Channel:
    """One authenticated client connection, its socket non-blocking.

    :param connection: the connection the handshake ran on; the channel owns it and
        closes it in :meth:`close` (its file descriptor is the one read and written).
    :param peer_pid: the client's pid, from ``SO_PEERCRED``.
    :param max_frame_bytes: the longest request payload accepted.
    :param session: what the manager keeps of the connection (opaque here).
    """

    __slots__ = (
        "_connection",
        "_fd",
        "_max",
        "_need",
        "_out",
        "_rest",
        "_rest_bytes",
        "backlog",
        "closed",
        "closing",
        "events",
        "peer_pid",
        "session",
        "waiting",
    )

    def __init__(
        self, connection: Connection, peer_pid: int, max_frame_bytes: int, session: Any
    ) -> None:
        self._connection = connection
        self._fd = fd = connection.fileno()
        os.set_blocking(fd, False)
        self.peer_pid = peer_pid
        self.session = session
        self._max = max_frame_bytes
        # A frame begun but not complete: its pieces (after its length prefix), their
        # bytes, and its length; -1 while the prefix itself is incomplete (then the
        # pieces are the prefix's); 0 when no frame is in progress.
        self._rest: list[bytes] = []
        self._rest_bytes = 0
        self._need = 0
        self._out: collections.deque[memoryview] = collections.deque()
        #: Complete requests not served yet (a client sends one at a time, but may not).
        self.backlog: collections.deque[bytes] = collections.deque()
        #: Whether a request of it is being served off the loop; it is not read
        #: until that reply is sent.
        self.waiting = False
        #: Whether it is to be closed once its output is sent.
        self.closing = False
        #: Whether :meth:`close` was called.
        self.closed = False
        #: The selector events the loop waits on for it (0: none, not registered).
        self.events = 0

    def fileno(self) -> int:
        return self._fd

    # -- reading ----------------------------------------------------------------------

    def read_frames(self, scratch: memoryview) -> list[bytes] | None:
        """Read what the socket has and return the frames it completes, in order (none
        if the frame in progress is still short); ``None`` at the end of the stream.

        :param scratch: a buffer of :data:`SCRATCH_BYTES` to read into, reused by
            every channel (the frames returned are copies).
        :raises ProtocolError: a frame's length is negative or over the limit.
        :raises OSError: the socket failed (a reset, say).
        """
        try:
            n = os.readv(self._fd, [scratch])
        except BlockingIOError:
            return []
        if n == 0:
            return None
        if not self._need:  # no frame in progress
            return self._split(scratch[:n])
        # The rest of a frame begun in an earlier read. Its pieces are kept as they
        # come and joined once it is whole, so what a client claims it will send
        # costs nothing until it is sent.
        self._rest.append(bytes(scratch[:n]))
        self._rest_bytes += n
        need = self._need
        if need >= 0 and self._rest_bytes < need:
            return []
        data = b"".join(self._rest)
        self._rest, self._rest_bytes, self._need = [], 0, 0
        if need < 0:  # its length prefix was incomplete: parse it all again
            return self._split(data)
        # data[:need] of a frame read to its end is data itself, not a copy.
        frames = [data[:need]]
        if len(data) > need:
            frames += self._split(memoryview(data)[need:])
        return frames

    def _split(self, data: bytes | memoryview) -> list[bytes]:
        frames: list[bytes] = []
        start, end = 0, len(data)
        while end - start >= 4:
            (size,) = _LENGTH.unpack_from(data, start)
            header = 4
            if size == -1:
                if end - start < 12:
                    break
                (size,) = _LONG_LENGTH.unpack_from(data, start + 4)
                header = 12
            if size < 0 or size > self._max:
                raise ProtocolError(f"a frame of {size} bytes (the limit is {self._max})")
            body = start + header
            if end - body < size:  # kept without its prefix, to be joined to the rest
                self._rest = [bytes(data[body:end])] if end > body else []
                self._rest_bytes, self._need = end - body, size
                return frames
            frames.append(bytes(data[body : body + size]))
            start = body + size
        if start < end:  # a length prefix still short
            self._rest, self._rest_bytes, self._need = [bytes(data[start:end])], end - start, -1
        return frames

    # -- writing ----------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Send one frame, or as much of it as the socket takes now and the rest later
        (:meth:`flush`, when it is writable); frames go out in the order sent.

        :raises OSError: the socket failed (the client is gone).
        """
        header = frame_header(len(payload))
        if self._out:
            self._out.extend((memoryview(header), memoryview(payload)))
            return
        try:
            n = os.writev(self._fd, [header, payload])
        except BlockingIOError:
            n = 0
        if n < len(header) + len(payload):
            if n < len(header):
                self._out.append(memoryview(header)[n:])
                self._out.append(memoryview(payload))
            else:
                self._out.append(memoryview(payload)[n - len(header) :])

    @property
    def backed_up(self) -> bool:
        """Whether output waits for the socket to become writable."""
        return bool(self._out)

    def flush(self) -> None:
        """Send what is queued, as far as the socket takes it.

        :raises OSError: the socket failed.
        """
        out = self._out
        while out:
            try:
                n = os.writev(self._fd, list(itertools.islice(out, _IOV)))
            except BlockingIOError:
                return
            while n and out:
                if n >= len(out[0]):
                    n -= len(out.popleft())
                else:
                    out[0] = out[0][n:]
                    n = 0

    def close(self) -> None:
        """Close the connection; queued output is dropped."""
        self.closed = True
        self._out.clear()
        self.backlog.clear()
        self._connection.close()
