"""A proxy's connection to its manager.

One :class:`Client` per proxy object. It connects lazily, on the first request, and
carries one request at a time (a lock serialises threads). Three rules keep it from
ever reading a reply that is not its own:

* **fork**: a connection belongs to the process that opened it. A forked child that
  uses an inherited proxy closes its copy of the descriptor (which leaves the parent's
  socket open) and connects afresh. Sharing one socket would interleave two processes'
  frames, as in redis-py #234 and py-lmdb #346.
* **interruption**: anything raised between sending a request and receiving its whole
  reply (``KeyboardInterrupt`` included) leaves the connection out of step, so it is
  discarded; the next request connects again.
* **a dead manager**: EOF or a socket error becomes :class:`StoreConnectionError` at
  once. The manager's sockets exist only in its own process, so its death is seen as
  EOF by every client immediately; there is nothing to time out. A connection that is
  readable between requests has seen that EOF (a manager sends nothing unasked), so
  it is dropped before it is used: the request connects afresh and raises, or reaches
  the store restarted under the same name.

Waiting for a reply, a client first polls its connection for up to
:data:`~shmstore._spin.SPIN_BEFORE_BLOCK_NS`, yielding the CPU between polls, and only
then blocks in ``read`` (see :mod:`shmstore._spin`): a manager answers a batched
``mset`` in some 50 µs, and a process that blocks for that long lets its CPU go idle.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client as _connect
from multiprocessing.connection import Connection
from typing import Any

from ._errors import StoreClosedError, StoreConnectionError, StorePermissionError
from ._protocol import parse_reply
from ._runtime import StorePaths
from ._spin import spin_until

__all__ = ["Client"]


class Client:
    """Requests and replies over one authenticated connection to the manager at ``paths``."""

    def __init__(self, paths: StorePaths, authkey: bytes | None) -> None:
        """:param authkey: the store's key; ``None`` reads it from the key file at each
        connect (proxies rebuilt from pickles carry no key, and a store may be started
        again under the same name with a new one)."""
        self._paths = paths
        self._authkey = authkey
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._connection: Connection | None = None
        self._ended = select.poll()  # POLLIN on the connection: its manager has exited
        #: Whether :meth:`close` was called (an attribute, not a property: every ``mget``
        #: reads it).
        self.closed = False
        #: Counts the connections made. A new one may reach a new manager (the store
        #: restarted under the same name), so state kept about the old one, such as
        #: the limits read from its header, must be read again when this changes.
        self.generation = 0

    def request(self, frame: bytes, while_waiting: Callable[[], bool] | None = None) -> Any:
        """Send one encoded request and return the decoded result of its reply.

        :param while_waiting: work for the wait: called, the reply looked for after
            each call, until it returns False or the reply is in (a staged ``mset``'s
            :meth:`Prefaulter.step <shmstore._prefault.Prefaulter.step>`); then the
            wait polls as always.

        :raises StoreClosedError: :meth:`close` was called.
        :raises StoreConnectionError: the manager cannot be reached or the connection
            broke; the cause is chained.
        :raises StoreError: the manager answered with an error.
        """
        self._check_usable()
        with self._lock:
            if self._connection is not None and self._ended.poll(0):
                self._discard()  # its manager has exited
            connection = self._connection or self._connect()
            try:
                connection.send_bytes(frame)
                if while_waiting is not None:
                    while not self._reply_ready() and while_waiting():
                        pass
                spin_until(self._reply_ready)  # the reply, or the manager's EOF
                reply = connection.recv_bytes()
            except BaseException as exc:
                self._discard()
                if isinstance(exc, (EOFError, OSError)):
                    raise StoreConnectionError(
                        f"lost the connection to the manager of store {self._paths.name!r}"
                    ) from exc
                raise
        return parse_reply(reply)

    def _reply_ready(self) -> bool:
        """Whether the connection is readable; the lock is held."""
        return bool(self._ended.poll(0))

    def wait_for_end(self, timeout_s: float) -> bool:
        """After a request that stops the manager: wait until it has exited (its end
        of the connection closes when its process does); whether it did in time."""
        with self._lock:
            connection = self._connection
            if connection is None:
                return True
            ended = connection.poll(timeout_s)
            self._discard()
            return ended

    def connect(self) -> None:
        """Connect now rather than on the first request; same errors as :meth:`request`."""
        self._check_usable()
        with self._lock:
            if self._connection is None:
                self._connect()

    def close(self) -> None:
        """Close the connection. Requests made afterwards raise :class:`StoreClosedError`."""
        self.closed = True
        if self._pid != os.getpid():
            self._forget_parent_connection()
        with self._lock:
            self._discard()

    def _check_usable(self) -> None:
        if self.closed:
            raise StoreClosedError(f"store {self._paths.name!r} is closed")
        if self._pid != os.getpid():
            self._forget_parent_connection()

    def _connect(self) -> Connection:
        authkey = self._authkey if self._authkey is not None else self._paths.read_key()
        try:
            connection = _connect(self._paths.socket, family="AF_UNIX", authkey=authkey)
        except AuthenticationError as exc:
            raise StorePermissionError(
                f"the manager of store {self._paths.name!r} refused this authkey"
            ) from exc
        except (EOFError, OSError) as exc:
            raise StoreConnectionError(
                f"cannot reach the manager of store {self._paths.name!r} at {self._paths.socket!r}"
            ) from exc
        self._connection = connection
        # Used under the lock only: poll objects refuse concurrent use by threads.
        self._ended = select.poll()
        self._ended.register(connection.fileno(), select.POLLIN)
        self.generation += 1
        return connection

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _forget_parent_connection(self) -> None:
        # Runs in a forked child before it first uses an inherited client. Only the
        # forking thread exists in the child, and the inherited lock may have been held
        # by another thread at fork time, so both are replaced rather than acquired.
        # Closing the child's copy of the descriptor leaves the parent's socket open.
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._discard()
