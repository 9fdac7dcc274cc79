"""The near cache's tracking connection: the one connection to the origin Redis server
on which the server reports every write of the store's keys, held by the near cache's
manager.

It is Redis's client-side caching in broadcast mode (``CLIENT TRACKING ON BCAST PREFIX
shmstore:{ns}:v:``, https://redis.io/docs/latest/develop/reference/client-side-caching/):
on a RESP3 connection the server pushes ``["invalidate", [key, ...]]`` after each write
of a key under the prefix, by any client, and after each expiry or eviction of one, and
``["invalidate", nil]`` after ``FLUSHDB``/``FLUSHALL``. In broadcast mode it does so
whether or not this connection ever read the key, so the near cache may fill from any
connection. A PING every :data:`PING_S` seconds, answered within the store's
``timeout_s``, tells a live connection from one that is silently gone (a host or a
network lost); then, as on any error, the connection counts as lost: ``on_lost`` runs
(the manager empties the near cache, since writes are going unreported) and a new
connection is tried every :data:`RETRY_S` seconds, ``on_ready`` running once tracking is
on again.

The callbacks run on this thread; the manager's take its table lock.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

# typing is imported for the type checker only: this module runs in the manager.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["PING_S", "RETRY_S", "Tracker"]

#: Seconds between PINGs on an idle tracking connection.
PING_S = 1.0
#: Seconds between attempts to connect again after the connection is lost.
RETRY_S = 0.5
#: The tracking connection's client name (``CLIENT LIST``), followed by the manager's pid.
CLIENT_NAME = "shmstore-tracking-"


class Tracker:
    """A daemon thread that holds the tracking connection and reports what it hears.

    The first connection is made in the constructor, so a server that cannot be
    reached, refuses the credentials or has no client-side caching (Redis before 6)
    fails the near cache's start rather than leaving it silently empty.

    :param url: the origin server's URL, password included (it reached the manager
        through its stdin, never its command line).
    :param prefix: the store's value key prefix, ``shmstore:{ns}:v:``, as bytes.
    :param timeout_s: seconds to connect, and for a PING's answer.
    :param on_keys: called with the keys (as ``str``, the prefix taken off) of each
        invalidation.
    :param on_all: called on a flush of the server's data.
    :param on_ready: called each time tracking is on (at start, after a reconnect).
    :param on_lost: called each time the connection is lost after ``on_ready``.
    :param client_name: the connection's name on the server (``CLIENT LIST``).
    :raises redis.RedisError: the first connection failed (``OSError`` too).
    """

    def __init__(
        self,
        url: str,
        prefix: bytes,
        timeout_s: float,
        on_keys: Callable[[list[str]], None],
        on_all: Callable[[], None],
        on_ready: Callable[[], None],
        on_lost: Callable[[], None],
        client_name: str,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._on_keys = on_keys
        self._on_all = on_all
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._client_name = client_name
        self._stopping = threading.Event()
        self._pushes: collections.deque[Any] = collections.deque()
        import redis

        first = self._connect(redis)
        self._on_ready()
        self._thread = threading.Thread(
            target=self._run, args=(first,), name="tracker", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it does within :data:`PING_S` seconds (it is a daemon,
        so the manager's exit does not wait for it)."""
        self._stopping.set()

    def _run(self, connection: Any) -> None:
        import redis

        while True:
            try:
                self._listen(connection)
                return  # asked to stop
            except (redis.RedisError, OSError):
                pass
            finally:
                connection.disconnect()
            self._on_lost()
            while True:
                if self._stopping.is_set():
                    return
                try:
                    connection = self._connect(redis)
                    break
                except (redis.RedisError, OSError):
                    self._stopping.wait(RETRY_S)
            self._on_ready()

    def _connect(self, redis: Any) -> Any:
        pool = redis.ConnectionPool.from_url(
            self._url,
            protocol=3,
            socket_timeout=self._timeout_s,
            socket_connect_timeout=self._timeout_s,
            client_name=self._client_name,
        )
        connection = pool.make_connection()
        try:
            connection.connect()
            # redis-py hands pushes to its parser's handler; with this one they are
            # queued here, and read_response(push_request=True) returns at each.
            connection._parser.set_invalidation_push_handler(self._pushes.append)
            connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
            reply = connection.read_response()
            if reply not in (b"OK", "OK"):
                raise redis.ResponseError(f"CLIENT TRACKING answered {reply!r}")
        except BaseException:
            connection.disconnect()
            raise
        return connection

    def _listen(self, connection: Any) -> None:
        import redis

        pong_due: float | None = None  # when an unanswered PING's answer is late
        next_ping = time.monotonic() + PING_S
        while not self._stopping.is_set():
            wait_s = max(0.0, (pong_due or next_ping) - time.monotonic())
            if connection.can_read(timeout=wait_s):
                reply = connection.read_response(push_request=True)
                if reply in (b"PONG", "PONG"):
                    pong_due = None
                self._deliver()
                continue
            now = time.monotonic()
            if pong_due is not None and now >= pong_due:
                raise redis.TimeoutError(f"no answer to PING within {self._timeout_s} s")
            if pong_due is None and now >= next_ping:
                connection.send_command("PING")
                pong_due = now + self._timeout_s
                next_ping = now + PING_S

    def _deliver(self) -> None:
        pushes, prefix = self._pushes, self._prefix
        while pushes:
            push = pushes.popleft()
            if len(push) < 2 or push[0] not in (b"invalidate", "invalidate"):
                continue
            if push[1] is None:
                self._on_all()
                continue
            cut = len(prefix)
            keys = []
            for raw in push[1]:
                # A name that does not decode is no store's key: nothing to invalidate.
                with contextlib.suppress(UnicodeDecodeError):
                    keys.append(raw[cut:].decode("utf-8", "surrogatepass"))
            if keys:
                self._on_keys(keys)
