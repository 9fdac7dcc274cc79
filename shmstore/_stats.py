"""A store's statistics, counted without a request or a lock on the read path.

Every proxy that reads shared memory itself counts its hits and misses in its own slot
of the store's reader table (``c``, :mod:`shmstore._layout`), which only it writes;
the manager counts the reads it answers, and what closed proxies' slots held, in
header words, with the writes, evictions and expirations. :func:`read_stats` adds
them up, from any process, without asking the manager. Names as Redis ``INFO``
(``keyspace_hits``, ``evicted_keys``, ``expired_keys``) and memcached's ``stats`` use
them.
"""

from __future__ import annotations

import os
import time
from collections import namedtuple

from . import _layout as L
from ._segment import Segment, unlink_segment

__all__ = ["ReaderCounters", "StoreStats", "read_stats"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NamedTuple

    class _Fields(NamedTuple):
        keys: int
        bytes: int
        max_bytes: int
        hits: int
        misses: int
        evictions: int
        expirations: int
        sets: int
        deletes: int
else:
    _Fields = namedtuple(
        "StoreStats",
        [
            "keys",
            "bytes",
            "max_bytes",
            "hits",
            "misses",
            "evictions",
            "expirations",
            "sets",
            "deletes",
        ],
    )


class StoreStats(_Fields):
    """A store's statistics, for all of its processes together, since it started.

    * ``keys``: keys held; ``bytes``: bytes of keys (UTF-8) and values held;
      ``max_bytes``: the bound on ``bytes`` (``max_store_bytes``). Entries expired but
      not reclaimed yet are counted, as Redis counts them, until the manager reclaims
      them (at the next write that needs room, or its periodic sweep).
    * ``hits``, ``misses``: keys asked for by ``mget`` that were found, and not found
      (an expired entry is a miss), every data path counted.
    * ``evictions``: entries evicted to make room; ``expirations``: expired entries
      reclaimed.
    * ``sets``: pairs written by ``mset`` (a repeated key counts each time);
      ``deletes``: keys ``mdelete`` removed (missing keys are not counted).

    ``hit_ratio``: ``hits / (hits + misses)``, 0.0 before any read.
    """

    __slots__ = ()

    @property
    def hit_ratio(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


#: Seconds :func:`read_stats` waits for a write in progress to finish.
_STATS_WAIT_S = 0.1


def read_stats(header: memoryview, readers: memoryview | None) -> StoreStats:
    """The statistics of the store whose ``ctl`` words are ``header`` and whose reader
    table, as words, is ``readers`` (``None``: not mapped; its slots are then left out).

    The manager's counters are read as of one moment between writes (STATS_SEQ, a
    seqlock only this waits on), so a write acknowledged before the call is counted;
    a manager stalled mid-write for :data:`_STATS_WAIT_S` gives its figures as they
    are. The proxies' hits and misses are added as each slot holds them then."""
    deadline = None
    while True:
        seq = header[L.W_STATS_SEQ]
        words = header[: L.W_STATS_SEQ].tolist()
        slots = readers.tolist() if readers is not None else []
        if not seq & 1 and header[L.W_STATS_SEQ] == seq:
            break
        if deadline is None:
            deadline = time.monotonic() + _STATS_WAIT_S
        elif time.monotonic() > deadline:
            break
        os.sched_yield()
    hits = words[L.W_HITS] + sum(slots[L.R_HITS :: L.READER_WORDS])
    misses = words[L.W_MISSES] + sum(slots[L.R_MISSES :: L.READER_WORDS])
    return StoreStats(
        words[L.W_LIVE_KEYS],
        words[L.W_LIVE_BYTES],
        words[L.W_MAX_STORE_BYTES],
        hits,
        misses,
        words[L.W_EVICTIONS],
        words[L.W_EXPIRATIONS],
        words[L.W_SETS],
        words[L.W_DELETES],
    )


class ReaderCounters:
    """One proxy's slot of the reader table: its hits and misses, written by this
    process only, its threads taking turns (:func:`count_found` of the hot functions)."""

    __slots__ = ("_count", "_words")

    def __init__(self, readers: memoryview, slot: int, hot: Any) -> None:
        """:param readers: the reader table as words; :param slot: this proxy's slot;
        :param hot: the store's hot functions (:func:`shmstore._hot.load`).

        :raises ValueError: ``slot`` is not a slot of the table."""
        if not 0 <= slot < len(readers) // L.READER_WORDS:
            raise ValueError(f"reader slot {slot} is not in the table")
        base = slot * L.READER_WORDS
        self._words = readers[base : base + L.READER_WORDS]
        self._count = hot.count_found

    def count(self, found: list[bytes | None]) -> None:
        """Count one batch's results: its hits (values) and misses (``None``)."""
        self._count(self._words, found)


class ReaderTable:
    """The manager's side of the reader table: the segment ``c`` (created here,
    removed by :meth:`close`) and which slots are given out.

    :param header: the store's ``ctl`` words, where :meth:`release` adds a slot's
        counts (its caller holds the table lock, as for every header write).
    """

    def __init__(self, prefix: str, header: memoryview) -> None:
        self._header = header
        self._segment = Segment.create(L.readers_name(prefix), L.READERS_BYTES)
        self._segment.reserve(0, L.READERS_BYTES)
        self._words: memoryview | None = memoryview(self._segment.buf).cast("Q")
        self._free = list(range(L.READER_SLOTS - 1, -1, -1))  # slot 0 given first

    def assign(self) -> int:
        """A free slot, zeroed; -1 if none is left (that proxy's reads then go
        through the manager, which counts them)."""
        return self._free.pop() if self._free else -1

    def release(self, slot: int) -> None:
        """Add the slot's counts into the header, zero it, and free it (nothing once
        the table is closed)."""
        words, header = self._words, self._header
        if slot < 0 or words is None:
            return
        base = slot * L.READER_WORDS
        header[L.W_STATS_SEQ] += 1  # a reader of statistics then reads the slot again
        header[L.W_HITS] += words[base + L.R_HITS]
        header[L.W_MISSES] += words[base + L.R_MISSES]
        words[base + L.R_HITS] = words[base + L.R_MISSES] = 0
        header[L.W_STATS_SEQ] += 1
        self._free.append(slot)

    def close(self) -> None:
        if self._words is not None:
            self._words.release()
            self._words = None
        self._segment.close()
        unlink_segment(self._segment.name)
