"""The manager's side of snapshots (format: :mod:`shmstore._snapshot`): saving the
table as of one moment while clients go on reading and writing, loading one at start,
and saving every so often.

A save takes the table lock only to capture the moment: the live entries' places in
the arena, and a hold on the arena so that no block they occupy is reused
(:meth:`Table.capture <shmstore._table.Table.capture>`). The entries are then read
and written to the file without the lock, so writes go on meanwhile, into other
blocks; the blocks they free are reused once the save has ended. So the file is
exactly the store as an ``mget`` at that moment would have seen it. One save runs at
a time; the manager's exit waits for one under way.
"""

from __future__ import annotations

import threading
import time

from . import _layout as L
from . import _snapshot
from ._table import Table

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["Snapshots"]


class Snapshots:
    """Saving and loading one store's snapshots.

    :param table: the store's table.
    :param table_lock: the manager's lock over it.
    :param path: the store's own snapshot file, if it has one (absolute): loaded by
        :meth:`load_own`, saved by :meth:`save_own` and, every ``every_s`` seconds,
        by a thread.
    """

    def __init__(
        self,
        table: Table,
        table_lock: threading.Lock,
        path: str | None = None,
        every_s: float | None = None,
    ) -> None:
        self._table = table
        self._table_lock = table_lock
        self._path = path
        self._save_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if path is not None and every_s:
            self._thread = threading.Thread(
                target=self._every, args=(every_s,), name="snapshotter", daemon=True
            )

    def start(self) -> None:
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        """Stop the periodic saves and wait for a save under way."""
        self._stopping.set()
        with self._save_lock:
            pass

    def load_own(self) -> int:
        """Load the store's snapshot file into its (empty) table, if there is one.

        :returns: the entries loaded (0 without a file).
        :raises SnapshotError: the file is not a snapshot, truncated or damaged; some
            of it may have been applied, so the store must not start.
        :raises LimitExceededError: it holds more than the store may.
        """
        if self._path is None:
            return 0
        try:
            batches = _snapshot.load(self._path)
            return self._apply(batches)
        except FileNotFoundError:
            return 0

    def save_own(self) -> int | None:
        """Save to the store's own file; ``None`` if it has none."""
        return None if self._path is None else self.save(self._path)

    def save(self, path: str) -> int:
        """Write the store, as of one moment, to ``path`` (absolute), atomically.

        :returns: the entries written.
        :raises OSError: it could not be written; ``path`` is as it was.
        """
        table = self._table
        with self._save_lock:
            with self._table_lock:
                live, now = table.capture()
            try:
                wall = time.time_ns()
                return _snapshot.save(path, wall, self._records(live, now, wall))
            finally:
                with self._table_lock:
                    table.release_capture()

    def _records(
        self, live: list[tuple[int, int, int, int, int]], now: int, wall: int
    ) -> Iterator[tuple[memoryview, memoryview, int]]:
        views: dict[int, memoryview] = {}
        buffers = self._table.arena.buffers
        try:
            for _order, ref, klen, vlen, expires in live:
                segment = ref >> L.OFFSET_BITS
                view = views.get(segment)
                if view is None:
                    view = views[segment] = memoryview(buffers[segment])  # type: ignore[arg-type]
                off = ref & L.OFFSET_MASK
                yield (
                    view[off : off + klen],
                    view[off + klen : off + klen + vlen],
                    expires - now + wall if expires else 0,
                )
        finally:
            for view in views.values():
                view.release()

    def _apply(self, batches: Iterator[list[tuple[memoryview, memoryview, int]]]) -> int:
        table, count = self._table, 0
        for batch in batches:
            wall = time.time_ns()
            # set_many takes one time to live a call: runs of one deadline together.
            start = 0
            while start < len(batch):
                expires = batch[start][2]
                end = start + 1
                while end < len(batch) and batch[end][2] == expires:
                    end += 1
                run = batch[start:end]
                start = end
                ttl = expires - wall if expires else 0
                if expires and ttl <= 0:
                    continue  # past its deadline: not loaded
                keys = [str(k, "utf-8", "surrogatepass") for k, _, _ in run]
                with self._table_lock:
                    table.set_many(keys, [v for _, v, _ in run], None, ttl)
                count += len(run)
        return count

    def _every(self, every_s: float) -> None:
        while not self._stopping.wait(every_s):
            try:
                self.save_own()
            except OSError:
                import traceback  # only here: kept out of the manager's memory otherwise

                traceback.print_exc()
