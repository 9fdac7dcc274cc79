"""The manager's record of a near cache's invalidations, which decides whether a fill
may still be applied.

A near cache (:mod:`shmstore._nearcache`) holds copies of an origin's values (a Redis
server's). A copy is filled after the origin was read, and an invalidation of that key
(another writer's write, reported by the origin) may arrive in between: applying the
fill then would keep the older value for good. So every invalidation the manager
applies takes the next number of a sequence, published in the header word
``W_INVALIDATION_SEQ``, and a proxy reads that word *before* it reads the origin. Its
fill carries the number it read (``seen``); the manager, which applies invalidations
and fills one at a time under its table lock, stores a key of the fill only if no
invalidation of that key was applied after ``seen``, and removes it otherwise.

The argument, for one key: an invalidation the manager applied before the proxy read
the word was sent by the origin after that write was done, so the origin's answer
that follows is at least as new as it. One applied after the word was read has a
number above ``seen``, so a fill that comes later is refused; one applied after the
fill removes the copy. Either way no copy older than an applied invalidation survives.

The record keeps the last :data:`KEEP` keys; forgetting one raises ``floor``, below
which a ``seen`` proves nothing, and every key of such a fill is refused. While the
origin's invalidations cannot be received (the tracking connection is down or not yet
set up), nothing is filled: writes then go unreported, so the cache is emptied when the
connection is lost and the sequence moves on once it is back.
"""

from __future__ import annotations

import collections

from . import _layout as L

__all__ = ["KEEP", "Invalidations"]

#: Keys whose last invalidation is remembered.
KEEP = 1 << 16


class Invalidations:
    """The invalidation sequence of one near cache. Not thread-safe: the manager
    calls it under its table lock.

    :param header: the store's header words, where the sequence is published.
    :param keep: keys remembered (default :data:`KEEP`).
    """

    def __init__(self, header: memoryview, keep: int = KEEP) -> None:
        self._header = header
        self._keep = keep
        self._seq = 0
        self._floor = 0
        self._last: collections.OrderedDict[str, int] = collections.OrderedDict()
        #: Whether the origin's invalidations are being received: fills are refused
        #: while not.
        self.tracking = False
        self._publish()

    @property
    def seq(self) -> int:
        """The number of the last invalidation applied."""
        return self._seq

    def record(self, keys: list[str]) -> int:
        """Record an invalidation of ``keys`` (already removed from the table).

        :returns: its number.
        """
        self._seq += 1
        last = self._last
        for key in keys:
            last[key] = self._seq
            last.move_to_end(key)
        while len(last) > self._keep:
            _, seq = last.popitem(last=False)
            self._floor = max(self._floor, seq)
        self._publish()
        return self._seq

    def record_all(self) -> int:
        """Record an invalidation of every key (a flush, or a lost connection; the
        table was emptied): fills that read the origin before it are refused.

        :returns: its number.
        """
        self._seq += 1
        self._floor = self._seq
        self._last.clear()
        self._publish()
        return self._seq

    def fresh(self, keys: list[str], seen: int) -> list[bool]:
        """For each key, whether a fill that read the origin after invalidation
        ``seen`` may store it."""
        if not self.tracking or seen < self._floor or seen > self._seq:
            return [False] * len(keys)
        last = self._last
        return [last.get(key, 0) <= seen for key in keys]

    def _publish(self) -> None:
        self._header[L.W_INVALIDATION_SEQ] = self._seq
