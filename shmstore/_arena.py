"""The manager's arena allocator: arena segments, size classes, free lists, the bump
pointer and page reservation (layout: :mod:`shmstore._layout`).

Entries take blocks of their size class (:func:`~shmstore._layout.entry_bytes`). The
space of overwritten and deleted entries goes to a free list per size class and is
reused by later entries of that class (every entry of a cache of embeddings is of one
class); it is not coalesced across classes or returned to the system while the store
lives, so a workload whose value sizes drift keeps the space its old sizes used.

Pages of ``/dev/shm`` are reserved (``posix_fallocate``, then populated) before
anything is written into them: a batch first calls :meth:`Arena.make_room`, which
reserves what the batch needs and fails cleanly with :class:`StoreFullError` if
``/dev/shm`` is full, and only then allocates. So that a batch seldom waits for that,
the manager reserves ahead of need while it has nothing else to do
(:meth:`Arena.reserve_ahead`). A batch of large values only is the exception: its
pages are allocated but not populated, and :meth:`Arena.write` has the kernel copy
its entries in, which fills a fresh page without clearing it first.
"""

from __future__ import annotations

import collections
import itertools
import operator

from . import _layout as L
from ._errors import StoreFullError
from ._segment import Segment, unlink_segment

TYPE_CHECKING = False  # typing for the type checker only
if TYPE_CHECKING:
    from typing import Any

__all__ = ["RESERVE_AHEAD", "RESERVE_CHUNK", "Arena"]

#: Arena bytes kept reserved past the bump pointer by :meth:`Arena.reserve_ahead`.
RESERVE_AHEAD = 512 << 10
#: Bytes one call of :meth:`Arena.reserve_ahead` reserves at most: 16 pages, some
#: 20-25 µs of the kernel's time on the virtual machines this was measured on, so a
#: request arriving meanwhile waits at most that long.
RESERVE_CHUNK = 64 << 10
_PAGE = 4096
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

    @property
    def reserved(self) -> int:
        """How far pages are reserved: the current segment's id << OFFSET_BITS | the
        offset reserved up to (0 before the first segment)."""
        return self._id << L.OFFSET_BITS | self._reserved_to

    def entry_sizes(self, used: list[int]) -> list[int]:
        """The block size of entries of ``used`` key and value bytes, through a cache
        of the sizes seen (a cache of embeddings has one)."""
        size_of = self._size_of
        if used and used.count(used[0]) == len(used):  # one size, as a cache of embeddings
            size = size_of.get(used[0])
            if size is None:
                return self._sizes_anew(used)
            return [size] * len(used)
        try:
            return [size_of[n] for n in used]
        except KeyError:
            return self._sizes_anew(used)

    def _sizes_anew(self, used: list[int]) -> list[int]:
        size_of = self._size_of
        if len(size_of) > _SIZE_CACHE_ENTRIES:
            size_of.clear()
        for n in used:
            size_of[n] = L.entry_bytes(n, 0)
        return [size_of[n] for n in used]

    def make_room(self, need: int, populate: bool = True) -> None:
        """Make sure ``need`` bytes past the bump pointer are reserved, in a new
        segment if the current one is too small, so that allocating them cannot fail.

        :param populate: map the pages reserved now, for entries written through the
            mapping (:mod:`shmstore._hot`); ``False`` for a batch that :meth:`write`
            writes.
        :raises StoreFullError: ``/dev/shm`` has no room; no entry changed.
        """
        segment = self._segments.get(self._id)
        if segment is None or self._bump + need > segment.size:
            size = max(self._segment_bytes, -(-need // RESERVE_CHUNK) * RESERVE_CHUNK)
            segment = Segment.create(L.arena_name(self._prefix, self._id + 1), size)
            self._id += 1
            self._segments[self._id] = segment
            self.buffers.append(segment.buf)
            self._bump = self._reserved_to = 0
        if self._bump + need > self._reserved_to:
            # Only the batch's own pages: more would make the batch wait longer, and
            # could refuse a batch that /dev/shm has room for.
            end = min(segment.size, -(-(self._bump + need) // _PAGE) * _PAGE)
            segment.reserve(self._reserved_to, end - self._reserved_to, populate)
            self._reserved_to = end

    def write(self, refs: list[int], keys: list[bytes], values: list[Any]) -> None:
        """Write each entry, its key then its value (bytes-like), at its ref, as
        :func:`shmstore._hot.fallback.place` does, but with one ``pwritev`` an entry
        (:meth:`Segment.write <shmstore._segment.Segment.write>`): for large values,
        into pages :meth:`make_room` reserved without populating them.

        Filling a fresh page this way costs the kernel 1.1 µs, against 1.3 µs to
        populate it and copy into the mapping (the mapping is 3 times faster into a
        page already mapped), on the virtual machines this was measured on.

        :raises ValueError: an entry would not fit in its segment (a bug in the caller).
        """
        segments = self._segments
        for ref, kb, value in zip(refs, keys, values, strict=True):
            segment = segments[ref >> L.OFFSET_BITS]
            offset = ref & L.OFFSET_MASK
            if offset + len(kb) + memoryview(value).nbytes > segment.size:
                raise ValueError(f"entry at {ref:#x} overruns its arena segment")
            segment.write(offset, [kb, value])

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
        if not sizes:  # an overwrite that its class's freed blocks cover, most often
            return []
        start = self._bump
        size = sizes[0]
        if size and sizes.count(size) == len(sizes):  # one class: a range of refs
            # (an offset is below 1 << OFFSET_BITS, so the segment's bits add as they or)
            first = (self._id << L.OFFSET_BITS) + start
            self._bump = start + size * len(sizes)
            return list(range(first, first + size * len(sizes), size))
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
        if sizes.count(sizes[0]) == len(sizes):  # one class: a scan, not a set
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

    def reserve_ahead(self) -> bool:
        """Reserve up to :data:`RESERVE_CHUNK` more bytes of the current segment, if
        fewer than :data:`RESERVE_AHEAD` past the bump pointer are reserved; whether
        there was anything to do. Best effort: a full ``/dev/shm`` leaves the reservation
        as it was (the batch that needs the bytes then reports it) and returns False.

        The manager calls this while no request is waiting. Reserving costs the kernel
        1.3-1.5 µs a page on the virtual machines this was measured on (it clears each
        page), three times what copying a value into a reserved page then costs. Done
        here, it fills time the manager's main thread would otherwise spend waiting for
        the next request. Done by a thread of its own, as it was, it competed with the
        main thread and the writer for two CPUs: 30 of the 33 requests that waited
        over 100 µs to be read had arrived while it ran. Batched ``mset`` of 1.5 kB
        values into a fresh store, in turns: 367-397k keys/s against 255-316k with that
        thread, and 431-439k against 358-372k with a compiled thread that never takes
        the GIL (a prototype, not kept)."""
        segment = self._segments.get(self._id)
        if segment is None or self._reserved_to - self._bump >= RESERVE_AHEAD:
            return False
        end = min(segment.size, self._reserved_to + RESERVE_CHUNK)
        if end <= self._reserved_to:
            return False  # the segment is reserved to its end; the next one starts anew
        try:
            segment.reserve(self._reserved_to, end - self._reserved_to)
        except (StoreFullError, OSError):
            return False
        self._reserved_to = end
        return True

    def close(self) -> None:
        """Unmap and unlink every segment."""
        self.buffers = [None]
        for segment in self._segments.values():
            segment.close()
            unlink_segment(segment.name)
        self._segments.clear()
