"""The manager's connections, served by one event loop: each a
:class:`~shmstore._channel.Channel`, its requests served in order as they complete, its
replies queued while its socket is full, and nothing read from it meanwhile.

:class:`Connections` registers channels with the manager's selector (the one its main
thread waits on for everything else) and leaves what a request means to the
manager's ``handle``; a connection that ends, breaks or sends a frame over the limit is
dropped, and the manager's ``on_drop`` releases what it kept for it.
"""

from __future__ import annotations

import selectors
import sys

from . import _protocol as proto
from ._channel import SCRATCH_BYTES, Channel
from ._errors import ProtocolError

TYPE_CHECKING = False  # typing for the type checker only (the manager's memory)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Connections", "Reply"]


class Reply:
    """One request's reply, sent at most once: early, from inside the table for an
    ``mset`` that can no longer fail, else once the request is done. Sending never
    blocks (what the socket cannot take waits in the channel, and the channel is not
    read again until it has gone), so the table may acknowledge with its lock held. A
    failed send is kept, not raised, so the table finishes the batch it acknowledged;
    the connection then ends."""

    __slots__ = ("channel", "error", "sent")

    _ACK = proto.ok_reply(None)

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.sent = False
        self.error: OSError | None = None

    def send(self, frame: bytes) -> None:
        if self.sent:
            return
        self.sent = True
        try:
            self.channel.send(frame)
        except OSError as exc:
            self.error = exc

    def acknowledge(self) -> None:
        """Send the reply of a successful request with no result."""
        self.send(self._ACK)


class Connections:
    """The channels of one manager, on its selector.

    :param selector: the main thread's selector; a channel's callback is its key's data,
        called with the channel (see :meth:`dispatch`).
    :param handle: serves one request frame and sends its reply through the
        :class:`Reply` (or sets ``channel.waiting`` and has it sent later, then calls
        :meth:`resume`); returns whether to keep the connection. Must not raise.
    :param on_drop: called once for a channel being dropped, before it is closed.
    """

    def __init__(
        self,
        selector: selectors.BaseSelector,
        handle: Callable[[bytes, Reply], bool],
        on_drop: Callable[[Channel], None],
    ) -> None:
        self._selector = selector
        self._handle = handle
        self._on_drop = on_drop
        self._scratch = memoryview(bytearray(SCRATCH_BYTES))  # every channel reads here

    def listen(self, channel: Channel) -> None:
        """Start serving a channel (after its handshake)."""
        self._interest(channel, selectors.EVENT_READ, self._on_readable)

    def dispatch(self, callback: Callable[[Any], None], fileobj: Any) -> bool:
        """Run a selector key's callback if ``fileobj`` is a channel; whether it was.
        A bug in serving one client drops that client only, said on stderr."""
        if not isinstance(fileobj, Channel):
            return False
        # Dropped by an earlier event of the same wait: its descriptor may already be
        # another connection's.
        if fileobj.closed:
            return True
        try:
            callback(fileobj)
        except Exception:
            import traceback  # only here: kept out of the manager's memory otherwise

            traceback.print_exc(file=sys.stderr)
            self.drop(fileobj)
        return True

    def resume(self, channel: Channel) -> None:
        """After a request served off the loop has had its reply sent: serve the
        channel's next requests."""
        if not channel.closed:
            self._serve_backlog(channel)

    def drop(self, channel: Channel) -> None:
        """Stop serving a channel and close it (once; later calls do nothing)."""
        if channel.closed:
            return
        self._interest(channel, 0, None)
        self._on_drop(channel)
        # Closed last: once a connection's socket is gone, so is whatever its end
        # removes.
        channel.close()

    def _on_readable(self, channel: Channel) -> None:
        try:
            frames = channel.read_frames(self._scratch)
        except (ProtocolError, OSError):
            frames = None  # over the frame limit, or its socket broke: drop it
        if frames is None:
            # The client is gone. One killed mid-frame ends here before anything of
            # its partial frame is decoded, so none of that batch is applied.
            self.drop(channel)
            return
        channel.backlog.extend(frames)
        self._serve_backlog(channel)

    def _serve_backlog(self, channel: Channel) -> None:
        """Serve a channel's complete requests in order, until one is served off the
        loop or its replies back up; then wait for the one or the other."""
        backlog = channel.backlog
        while backlog and not channel.waiting and not channel.closing:
            reply = Reply(channel)
            keep = self._handle(backlog.popleft(), reply)
            if reply.error is not None:
                self.drop(channel)  # the client is gone
                return
            if not keep:
                channel.closing = True
        self._watch(channel)

    def _watch(self, channel: Channel) -> None:
        """Wait for what the channel needs next: room for its queued replies, else its
        next requests; nothing while a request of it is served off the loop."""
        if channel.closed:
            return
        if channel.backed_up:
            self._interest(channel, selectors.EVENT_WRITE, self._on_writable)
        elif channel.closing:
            self.drop(channel)
        elif channel.waiting:
            self._interest(channel, 0, None)
        else:
            self._interest(channel, selectors.EVENT_READ, self._on_readable)

    def _on_writable(self, channel: Channel) -> None:
        try:
            channel.flush()
        except OSError:
            self.drop(channel)
            return
        if not channel.backed_up:
            self._serve_backlog(channel)

    def _interest(self, channel: Channel, events: int, callback: Any) -> None:
        if events == channel.events:
            return
        if not events:
            self._selector.unregister(channel)
        elif not channel.events:
            self._selector.register(channel, events, callback)
        else:
            self._selector.modify(channel, events, callback)
        channel.events = events
