"""The manager's arena allocator: arena segments, size classes, free lists, the bump
pointer and page reservation (layout: :mod:`shmstore._layout`).

Entries take blocks of their size class (:func:`~shmstore._layout.entry_bytes`). The
space of overwritten and deleted entries goes to a free list per size class and is
reused by later entries of that class (every entry of a cache of embeddings is of one
class); it is not coalesced across classes or returned to the system while the store
lives, so a workload whose value sizes drift keeps the space its old sizes used.

Pages of ``/dev/shm`` are reserved (``posix_fallocate``) before anything is written
into them: a batch first calls :meth:`Arena.make_room`, which fails cleanly with
:class:`StoreFullError` if ``/dev/shm`` is full, and only then allocates.
"""

from __future__ import annotations

import collections
import itertools
import operator

from . import _layout as L
from ._errors import StoreFullError
from ._segment import Segment, unlink_segment

__all__ = ["RESERVE_AHEAD", "Arena"]

#: Granularity of page reservation in an arena segment. Each step the reserver thread
#: takes costs the manager's main thread some handoffs of the GIL and the table lock;
#: with 1.5 kB values in batches of 64, steps of 1 MiB rather than 256 KiB cut the main
#: thread's futex calls fivefold (194 against 1,040 over 624 batches, ``perf trace``).
RESERVE_STEP = 1 << 20
_PAGE = 4096
#: Arena bytes the manager keeps reserved past the bump pointer (:meth:`Arena.reservation_wanted`).
RESERVE_AHEAD = 512 << 10
_SIZE_CACHE_ENTRIES = 4096


class Arena:
    """The arena segments of one store, named under ``prefix``, each of
    ``segment_bytes`` (virtual; a larger entry gets a segment of its own size)."""

    def __init__(self, prefix: str, segment_bytes: int) -> None:
        self._prefix = prefix
        self._segment_bytes = segment_bytes
        self._segments: dict[int, Segment] = {}
        #: ``buffers[id]``: arena segment ``id``'s mapping, ``None`` for id 0; the form
        #: the hot functions take.
        self.buffers: list[object] = [None]
        self._id = 0  # the segment the bump pointer is in
        self._bump = self._reserved_to = 0
        self._free: dict[int, list[int]] = {}
        self._size_of: dict[int, int] = {}  # key + value bytes -> entry bytes
        # While a snapshot is being written from the arena (hold()), freed blocks wait
        # here rather than on the free lists, so nothing it reads is overwritten.
        self._held: list[tuple[list[int], list[int]]] | None = None

    @property
    def bump(self) -> int:
        """Bytes handed out by the bump pointer in the current segment."""
        return self._bump

    def entry_sizes(self, used: list[int]) -> list[int]:
        """The block size of entries of ``used`` key and value bytes, through a cache
        of the sizes seen (a cache of embeddings has one)."""
        size_of = self._size_of
        try:
            return [size_of[n] for n in used]
        except KeyError:
            if len(size_of) > _SIZE_CACHE_ENTRIES:
                size_of.clear()
            for n in used:
                size_of[n] = L.entry_bytes(n, 0)
            return [size_of[n] for n in used]

    def make_room(self, need: int) -> None:
        """Make sure ``need`` bytes past the bump pointer are reserved, in a new
        segment if the current one is too small, so that allocating them cannot fail.

        :raises StoreFullError: ``/dev/shm`` has no room; no entry changed.
        """
        segment = self._segments.get(self._id)
        if segment is None or self._bump + need > segment.size:
            size = max(self._segment_bytes, -(-need // RESERVE_STEP) * RESERVE_STEP)
            segment = Segment.create(L.arena_name(self._prefix, self._id + 1), size)
            self._id += 1
            self._segments[self._id] = segment
            self.buffers.append(segment.buf)
            self._bump = self._reserved_to = 0
        if self._bump + need > self._reserved_to:
            end = min(segment.size, -(-(self._bump + need) // RESERVE_STEP) * RESERVE_STEP)
            try:
                segment.reserve(self._reserved_to, end - self._reserved_to)
            except StoreFullError:
                # No room for a whole step: perhaps for the batch's own pages.
                end = min(segment.size, -(-(self._bump + need) // _PAGE) * _PAGE)
                segment.reserve(self._reserved_to, end - self._reserved_to)
            self._reserved_to = end

    def bump_need(self, sizes: list[int]) -> int:
        """Bytes :meth:`allocate` will take from the bump pointer for ``sizes``: what
        the free lists do not cover, so that :meth:`make_room` asks the kernel for no
        more (a full ``/dev/shm`` still takes a batch that fits in freed blocks)."""
        free = self._free
        if not free:
            return sum(sizes)
        first = sizes[0] if sizes else 0
        if sizes.count(first) == len(sizes):  # one class, as a cache of embeddings
            return max(0, len(sizes) - len(free.get(first, ()))) * first
        need = 0
        for size, n in collections.Counter(sizes).items():
            need += max(0, n - len(free.get(size, ()))) * size
        return need

    def allocate(self, sizes: list[int]) -> list[int]:
        """Blocks of ``sizes`` bytes: freed ones of their class if any, else at the bump
        pointer (room made by :meth:`make_room` for their sum); their refs, in order.
        Freed blocks are taken last freed first."""
        free = self._free
        classes = set(sizes)
        if len(classes) == 1 and free:
            # One class (a cache of embeddings): its free blocks, then a bump run, in
            # whole-list operations rather than one step per entry.
            reuse = free.get(sizes[0])
            if reuse:
                k = min(len(reuse), len(sizes))
                refs = reuse[: len(reuse) - k - 1 : -1] if k < len(reuse) else reuse[::-1]
                del reuse[len(reuse) - k :]
                return refs + self._bump_run(sizes[k:])
        if not (free and any(free.get(size) for size in classes)):
            return self._bump_run(sizes)
        refs = []
        base = self._id << L.OFFSET_BITS
        bump = self._bump
        for size in sizes:
            reuse = free.get(size)
            if reuse:
                refs.append(reuse.pop())
            else:
                refs.append(base | bump)
                bump += size
        self._bump = bump
        return refs

    def _bump_run(self, sizes: list[int]) -> list[int]:
        start = self._bump
        offsets = list(itertools.accumulate(sizes, initial=start))
        self._bump = offsets.pop()
        return list(map(operator.or_, offsets, itertools.repeat(self._id << L.OFFSET_BITS)))

    def release(self, refs: list[int], used: list[int]) -> None:
        """Return the blocks at ``refs``, of entries of ``used`` key and value bytes,
        for reuse. Only once no slot points at them and their keys' stripes have moved
        on (the batch that freed them is past its write window's start)."""
        if not refs:
            return
        if self._held is not None:
            self._held.append((refs, used))
            return
        free = self._free
        sizes = self.entry_sizes(used)
        if len(set(sizes)) == 1:
            free.setdefault(sizes[0], []).extend(refs)
            return
        for ref, size in zip(refs, sizes, strict=True):
            free.setdefault(size, []).append(ref)

    def hold(self) -> None:
        """Keep every block allocated now as it is until :meth:`unhold`: blocks freed
        meanwhile are reused only after it (a snapshot reads them outside the table
        lock)."""
        if self._held is None:
            self._held = []

    def unhold(self) -> None:
        """Return the blocks freed since :meth:`hold` for reuse."""
        held, self._held = self._held, None
        for refs, used in held or ():
            self.release(refs, used)

    def short_of_reserve(self) -> bool:
        """Whether :meth:`reservation_wanted` has work to give. Safe to ask without the
        table lock, as a hint: a stale answer only delays or repeats a cheap check."""
        return self._reserved_to - self._bump < RESERVE_AHEAD

    def reservation_wanted(self) -> tuple[Segment, int, int] | None:
        """``(segment, start, end)``: the bytes to reserve so that ``RESERVE_AHEAD``
        bytes past the bump pointer are, or ``None`` if they are.

        Reserving costs the kernel about 0.8 ms per MiB on the virtual machines this
        was measured on. The manager's reserver thread asks this under the table lock,
        calls :meth:`Segment.reserve` without it (its system calls release the GIL),
        and reports with :meth:`reserved`; a batch that finds its bytes not reserved
        yet reserves them itself, so this is only ever ahead of need."""
        segment = self._segments.get(self._id)
        if segment is None or not self.short_of_reserve():
            return None
        end = min(segment.size, -(-(self._bump + RESERVE_AHEAD) // RESERVE_STEP) * RESERVE_STEP)
        return (segment, self._reserved_to, end) if end > self._reserved_to else None

    def reserved(self, segment: Segment, end: int) -> None:
        """Record that ``segment`` is reserved up to ``end`` (ignored if the arena has
        moved on to a new segment since)."""
        if self._segments.get(self._id) is segment and end > self._reserved_to:
            self._reserved_to = end

    def close(self) -> None:
        """Unmap and unlink every segment."""
        self.buffers = [None]
        for segment in self._segments.values():
            segment.close()
            unlink_segment(segment.name)
        self._segments.clear()
