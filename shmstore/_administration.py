"""A store's administration, beside its data operations (:mod:`shmstore._store`): its
statistics, a snapshot on demand, what its manager says of itself, and stopping it.
"""

from __future__ import annotations

import os
from typing import Any

from . import _layout as L
from . import _protocol as proto
from ._client import Client
from ._errors import StoreNotFoundError
from ._launcher import SAVING_STOP_TIMEOUT_S
from ._runtime import StorePaths, pid_alive
from ._segment import Segment
from ._stats import StoreStats, read_stats

__all__ = ["Administration"]

TYPE_CHECKING = False


class Administration:
    """The proxies' administrative methods, mixed into them: they need the proxy's
    client, paths, frames and open check, and nothing of its data path."""

    _client: Client
    _paths: StorePaths

    if TYPE_CHECKING:

        @property
        def name(self) -> str: ...

        def _check_open(self) -> None: ...

        def _frame(self, *message: Any) -> bytes: ...

        def close(self) -> None: ...

    def stats(self) -> StoreStats:
        """The store's statistics, for all of its processes together (see
        :class:`~shmstore.StoreStats`), read from its shared memory without a request.

        :raises StoreClosedError: this proxy is closed.
        :raises StoreNotFoundError: the store has stopped.
        """
        self._check_open()
        prefix = self._paths.segment_prefix
        try:
            ctl = Segment.open(L.ctl_name(prefix))
            readers = Segment.open(L.readers_name(prefix))
        except FileNotFoundError:
            raise StoreNotFoundError(f"store {self.name!r} has stopped") from None
        header = memoryview(ctl.buf).cast("Q")
        table = memoryview(readers.buf).cast("Q")
        try:
            if not pid_alive(header[L.W_MANAGER_PID]):
                raise StoreNotFoundError(f"store {self.name!r} has stopped")
            return read_stats(header, table)
        finally:
            header.release()
            table.release()
            ctl.close()
            readers.close()

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write a snapshot of the whole store to ``path``: every entry as of one
        moment (as one ``mget`` of all keys would see them), while every process goes
        on reading and writing. The manager writes it, atomically (a temporary file
        beside ``path``, fsynced, then renamed), so a crash midway, even SIGKILL,
        leaves the previous file whole. Format and argument: :mod:`shmstore._snapshot`.

        :returns: the entries written.
        :raises StoreError: the file cannot be written (the message says why); ``path``
            is as it was.
        :raises StoreConnectionError: the manager cannot be reached.
        """
        self._check_open()
        count: int = self._client.request(
            self._frame(proto.SAVE, os.path.abspath(os.fspath(path)))
        )
        return count

    def info(self) -> dict[str, Any]:
        """What the manager says of itself, for ``shmstore ls``: ``pid``, ``owner_pid``,
        ``started`` (wall-clock ns), ``clients`` (processes connected, this one
        included) and ``snapshot`` (its own file, or ``None``).

        :raises StoreConnectionError: the manager cannot be reached.
        """
        self._check_open()
        result: dict[str, Any] = self._client.request(self._frame(proto.INFO))
        return result

    def stop(self) -> None:
        """Stop the store, from any process of its user (as ``shmstore stop``): its
        manager saves its snapshot, if it has one, and exits; this returns once it has
        (or after :data:`~shmstore._launcher.SAVING_STOP_TIMEOUT_S` seconds), and
        every proxy raises :class:`StoreConnectionError` from then on. This proxy is
        closed.

        :raises StoreConnectionError: the manager cannot be reached.
        """
        self._check_open()
        try:
            self._client.request(self._frame(proto.STOP))
            self._client.wait_for_end(SAVING_STOP_TIMEOUT_S)
        finally:
            self.close()
