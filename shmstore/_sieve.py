"""SIEVE eviction, the manager's half (Zhang, Yang, Yue, Vigfusson and Rashmi, "SIEVE
is Simpler than LRU: an Efficient Turn-Key Eviction Algorithm for Web Caches", NSDI
2024; the reference is libCacheSim's ``Sieve.c``).

The queue holds the store's keys in insertion order, oldest (the tail) first; new keys
join at the head. Each key has a visited bit, set by a read that hits it. To make room,
the hand walks from where it last stopped towards the head, wrapping to the tail: a
visited key has its bit cleared and is passed over, the first unvisited one is
evicted, and the hand stops just past it. Unlike LRU, a hit moves nothing, so readers
only ever set a byte, once, with no lock: the visited bytes are in shared memory, one
per index slot (:mod:`shmstore._layout`, ``v<gen>``), and the queue and the hand are
here, in the manager's memory.

Two rules of a store's own: an overwrite keeps the key's place and its bit (only reads
set it), and the keys of the batch being made room for are passed over without
touching their bits, so a batch never evicts part of itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from . import _layout as L

__all__ = ["Sieve"]

#: Candidates looked up in the index at once.
_CHUNK = 64
#: Holes (removed keys) the queue keeps before it is compacted, at least.
_MIN_HOLES = 1024


class Sieve:
    """The SIEVE queue and hand of one store (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: list[bytes | None] = []  # tail first; None: a removed key's hole
        self._pos: dict[bytes, int] = {}
        self._hand = 0  # the queue position the hand is at
        self._holes = 0

    def keys(self) -> list[bytes]:
        """The queue, tail (oldest) first."""
        return [k for k in self._queue if k is not None]

    def insert(self, keys: list[bytes]) -> None:
        """Add new keys at the head, in order (keys not in the queue, each once)."""
        start = len(self._queue)
        self._pos.update(zip(keys, range(start, start + len(keys)), strict=True))
        self._queue.extend(keys)

    def remove(self, keys: list[bytes]) -> None:
        """Take keys out of the queue; keys not in it are ignored."""
        queue, pos = self._queue, self._pos
        for kb in keys:
            p = pos.pop(kb, None)
            if p is not None:
                queue[p] = None
                self._holes += 1
        if self._holes > _MIN_HOLES and self._holes > len(pos):
            self._compact()
        # A hand left on a removed key moves on now, to the next key towards the head,
        # or to the tail if that was the head: keys inserted later must not be met
        # before the tail is.
        queue = self._queue  # compacted, perhaps
        hand, n = self._hand, len(queue)
        while hand < n and queue[hand] is None:
            hand += 1
        self._hand = hand if hand < n else 0

    def select(
        self,
        need: int,
        protected: Collection[bytes],
        slots_of: Callable[[list[bytes]], list[int]],
        slots: memoryview,
        visited: memoryview,
    ) -> tuple[list[bytes], int]:
        """Walk the hand until the keys it chose hold at least ``need`` bytes of keys
        and values, clearing the visited bytes it passes; the keys are not removed
        (the caller deletes them, then calls :meth:`remove`).

        :param protected: keys to pass over untouched (the batch's own).
        :param slots_of: the index slot of each key (``find``).
        :param slots: the index's words, for each entry's size.
        :param visited: the visited bytes, one per slot.
        :returns: ``(victims, bytes)``; fewer bytes than ``need`` only when every key
            not protected was chosen.
        """
        queue = self._queue
        n = len(queue)
        victims: list[bytes] = []
        chosen: set[bytes] = set()
        freed = 0
        hand = self._hand
        budget = 2 * n + 1  # two passes: the first may only clear bits
        while freed < need and budget > 0:
            positions: list[int] = []
            candidates: list[bytes] = []
            while len(candidates) < _CHUNK and budget > 0:
                if hand >= n:
                    hand = 0
                kb = queue[hand]
                if kb is not None and kb not in protected and kb not in chosen:
                    positions.append(hand)
                    candidates.append(kb)
                hand += 1
                budget -= 1
            if not candidates:
                break
            stop = hand
            for p, kb, slot in zip(positions, candidates, slots_of(candidates), strict=True):
                if kb in chosen:
                    continue  # met again after a wrap: chosen on the first pass
                assert slot >= 0, "a key of the queue is not in the index"
                if visited[slot]:
                    visited[slot] = 0
                    continue
                chosen.add(kb)
                victims.append(kb)
                freed += len(kb) + slots[slot * L.SLOT_WORDS + L.S_VLEN]
                if freed >= need:
                    stop = p + 1
                    break
            hand = stop
        self._hand = hand if hand < n else 0
        return victims, freed

    def _compact(self) -> None:
        queue = self._queue
        live: list[bytes | None] = [kb for kb in queue if kb is not None]
        self._hand = sum(1 for kb in queue[: self._hand] if kb is not None)
        self._queue = live
        self._pos = {kb: p for p, kb in enumerate(live) if kb is not None}
        self._holes = 0
        if self._hand >= len(live):
            self._hand = 0
