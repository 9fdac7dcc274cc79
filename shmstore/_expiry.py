"""The manager's deadlines: which keys may have expired, and when the next one does.

Each batch written with a time to live is remembered once, as ``(deadline, keys)`` in
a heap. A key overwritten or deleted since stays in its batch; the table checks each
key's EXPIRES word before reclaiming it, so a stale record only costs that check. So
that stale records cannot pile up (a long time to live and many overwrites), the
table rebuilds the records from the index (:meth:`Deadlines.replace`) when they name
many more keys than the store holds.
"""

from __future__ import annotations

import heapq
import itertools

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, list[bytes]]] = []
        self._seq = itertools.count()  # ties broken by age, never by comparing keys
        #: Keys named by the records, stale ones included.
        self.recorded = 0

    def __bool__(self) -> bool:
        return bool(self._heap)

    @property
    def next(self) -> int | None:
        """The earliest deadline recorded (``time.monotonic_ns()``), or ``None``."""
        return self._heap[0][0] if self._heap else None

    def add(self, deadline: int, keys: list[bytes]) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), keys))
        self.recorded += len(keys)

    def replace(self, entries: list[tuple[int, bytes]]) -> None:
        """Forget every record; remember ``entries``, ``(deadline, key)`` each."""
        entries.sort(key=lambda entry: entry[0])
        self._heap = [(deadline, next(self._seq), [kb]) for deadline, kb in entries]
        self.recorded = len(entries)  # sorted: already a heap

    def due(self, now: int, limit: int | None = None) -> list[bytes]:
        """The keys of batches whose deadline is not after ``now``, forgotten here;
        whole batches, until at least ``limit`` keys (all if ``None``)."""
        heap = self._heap
        keys: list[bytes] = []
        while heap and heap[0][0] <= now and (limit is None or len(keys) < limit):
            keys.extend(heapq.heappop(heap)[2])
        self.recorded -= len(keys)
        return keys
