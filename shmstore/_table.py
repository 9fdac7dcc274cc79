"""The manager's key-value state, in shared memory (layout: :mod:`shmstore._layout`).

Only the manager writes, one batch at a time under its table lock, so the methods here
need no lock of their own; each write batch is wrapped in the store-wide seqlock so
readers in other processes either see it whole or read again. Before a batch changes
anything, :meth:`Table._make_room` grows the index and reserves every arena byte the
batch could need, so running out of ``/dev/shm`` raises :class:`StoreFullError` with
nothing of the batch applied.

Space of overwritten and deleted entries goes to a free list per size class and is
reused by later entries of that class (every entry of a cache of embeddings is of one
class); it is not coalesced across classes or returned to the system while the store
lives, so a workload whose value sizes drift keeps the space its old sizes used.
"""

from __future__ import annotations

import itertools
import operator
import os
import struct
from collections.abc import Callable, Sequence

from . import _layout as L
from ._errors import StoreTooLargeError
from ._limits import Limits
from ._segment import Segment, unlink_segment

# typing is imported for the type checker only: the manager imports this module, and
# at run time typing would cost that process memory for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Table"]

#: Virtual size of an arena segment; pages are reserved as they are used.
ARENA_BYTES = 256 << 20
#: Granularity of page reservation in an arena segment.
RESERVE_STEP = 256 << 10
#: Arena bytes the manager keeps reserved past the bump pointer (:meth:`Table.reservation_wanted`).
RESERVE_AHEAD = 512 << 10
INITIAL_CAPACITY = 1024
_SIZE_CACHE_ENTRIES = 4096
#: Batches of new entries that average at most this many bytes, and come to at most
#: _JOIN_MAX_BYTES, are joined and copied in one go; others are copied entry by entry,
#: without the join's extra copy.
_JOIN_BYTES_PER_ENTRY = 8192
_JOIN_MAX_BYTES = 1 << 20


class _Pads(dict[int, bytes]):
    """``_PADS[n]``: ``n`` zero bytes, made once for the short lengths that recur."""

    def __missing__(self, n: int) -> bytes:
        pad = bytes(n)
        if n <= 4096:
            if len(self) > _SIZE_CACHE_ENTRIES:
                self.clear()
            self[n] = pad
        return pad


_PADS = _Pads()

_W = L.SLOT_WORDS
# A whole slot in one write, native byte order as the memoryview.cast("Q") readers use.
_SLOT = struct.Struct(f"{L.SLOT_WORDS}Q")


def _encode(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


class Table:
    """A ``str -> bytes`` map with ``InMemoryByteStore``'s batch semantics, kept in the
    shared-memory segments named by ``prefix`` (created here, removed by :meth:`close`)."""

    def __init__(
        self, prefix: str, arena_bytes: int = ARENA_BYTES, limits: Limits | None = None
    ) -> None:
        """:param arena_bytes: virtual size of each arena segment (a value larger than
        this gets a segment of its own size).
        :param limits: enforced by :meth:`set_many`, and published in the header for
            proxies to check before they send (default: :meth:`Limits.resolve`)."""
        self._prefix = prefix
        self._arena_bytes = arena_bytes
        self._limits = limits or Limits.resolve()
        self._segments: list[Segment] = []
        self._ctl = self._create(L.ctl_name(prefix), L.CTL_BYTES)
        self._ctl.reserve(0, L.CTL_BYTES)
        self._header = memoryview(self._ctl.buf).cast("Q")
        self._header[L.W_MAGIC] = L.MAGIC
        self._header[L.W_VERSION] = L.VERSION
        self._header[L.W_MAX_VALUE_BYTES] = self._limits.max_value_bytes
        self._header[L.W_MAX_BATCH_BYTES] = self._limits.max_batch_bytes
        self._header[L.W_MAX_STORE_BYTES] = self._limits.max_store_bytes
        self._header[L.W_MANAGER_PID] = os.getpid()
        self._index: Segment | None = None
        self._index_buf: Any = None
        self._slots = memoryview(b"").cast("Q")
        self._capacity = 0
        self._used = 0  # slots not empty: live entries and tombstones
        self._live = self._live_bytes = self._next_order = 0
        self._arenas: dict[int, Segment] = {}
        self._arena_id = 0
        self._bump = self._reserved_to = 0
        self._free: dict[int, list[int]] = {}
        self._size_of: dict[int, int] = {}  # key + value bytes -> entry bytes
        self._rebuild_index(INITIAL_CAPACITY)

    # -- reads (the manager's own, for proxies that cannot read directly) --------------

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The value of each key in order, ``None`` for a miss; duplicates are kept."""
        out: list[bytes | None] = []
        slots = self._slots
        for key in keys:
            kb = _encode(key)
            i = self._find(kb, L.key_hash(kb))
            if i < 0:
                out.append(None)
            else:
                ref, vlen = slots[i * _W + L.S_REF], slots[i * _W + L.S_VLEN]
                buf, off = self._arenas[ref >> L.OFFSET_BITS].buf, (ref & L.OFFSET_MASK) + len(kb)
                out.append(buf[off : off + vlen])
        return out

    def keys(self, prefix: str | None) -> list[str]:
        """The keys for which ``key.startswith(prefix)``, in insertion order; all if ``None``."""
        slots = self._slots
        refs = slots[L.S_REF :: _W].tolist()
        orders = slots[L.S_ORDER :: _W].tolist()
        lengths = slots[L.S_HASH_KLEN :: _W].tolist()
        found = sorted(
            (orders[i], self._key_at(ref, lengths[i] >> 32))
            for i, ref in enumerate(refs)
            if ref > L.DELETED
        )
        keys = [kb.decode("utf-8", "surrogatepass") for _, kb in found]
        return [k for k in keys if k.startswith(prefix)] if prefix else keys

    # -- writes ---------------------------------------------------------------------

    def set_many(
        self,
        keys: Sequence[str],
        values: Sequence[Any],
        acknowledge: Callable[[], None] | None = None,
        *,
        copy_before_acknowledge: bool = False,
    ) -> None:
        """Store the pairs in order, so the last value of a repeated key wins.

        :param values: bytes-like objects, as many as ``keys``; they must stay as
            they are until this returns, or, with ``copy_before_acknowledge``, until
            ``acknowledge`` is called.
        :param acknowledge: called once the batch can no longer fail, inside the write
            window, before its entries are written, or, with
            ``copy_before_acknowledge``, once they are and only the index is left to
            change (the manager replies there, so its client prepares the next request
            while this one is applied). A reader that starts after the call finds SEQ
            odd until the whole batch is in, so it never misses what was acknowledged.
            It must not raise.
        :raises LimitExceededError: a value, the batch or the store would be over its
            limit (the subclass names which); nothing was applied.
        :raises StoreFullError: ``/dev/shm`` cannot hold the batch; nothing was applied.
        """
        encoded = list(map(_encode, keys))
        lengths = [v.nbytes if type(v) is memoryview else len(v) for v in values]
        self._limits.check_batch(keys, lengths)
        key_lengths = list(map(len, encoded))
        added = sum(key_lengths) + sum(lengths)
        if self._live_bytes + added > self._limits.max_store_bytes:
            total = self._live_bytes + self._growth(encoded, lengths)
            if total > self._limits.max_store_bytes:
                raise StoreTooLargeError(
                    f"the store would hold {total} bytes of keys and values, over "
                    f"max_store_bytes={self._limits.max_store_bytes}"
                )
        sizes = self._entry_sizes(key_lengths, lengths)
        need = sum(sizes)
        self._make_room(need, len(encoded))
        refs = None
        if acknowledge is None or copy_before_acknowledge:
            # Entries are written before the write window: nothing points at their
            # blocks yet (a reused block was freed by an earlier batch, whose window
            # readers that could still be copying it from will notice), so readers
            # wait only for the index to change.
            refs = self._place(encoded, values, key_lengths, lengths, sizes, need)
        with self._write_window():
            if acknowledge is not None:
                acknowledge()
            if refs is None:
                refs = self._place(encoded, values, key_lengths, lengths, sizes, need)
            self._index_entries(encoded, key_lengths, lengths, refs, added)

    def _place(
        self,
        encoded: list[bytes],
        values: Sequence[Any],
        key_lengths: list[int],
        lengths: list[int],
        sizes: list[int],
        need: int,
    ) -> list[int]:
        """Write the entries into blocks no slot points at, in room already made; their
        refs, in order."""
        free = self._free
        joinable = need <= min(_JOIN_MAX_BYTES, _JOIN_BYTES_PER_ENTRY * len(sizes))
        if joinable and not (free and any(free.get(size) for size in set(sizes))):
            return self._place_run(encoded, values, key_lengths, lengths, sizes)
        return self._place_each(encoded, values, lengths, sizes)

    def _place_run(
        self,
        encoded: list[bytes],
        values: Sequence[Any],
        key_lengths: list[int],
        lengths: list[int],
        sizes: list[int],
    ) -> list[int]:
        """Write small entries end to end at the bump pointer, joined with their padding
        and copied in one go (two copies at C speed cost less than two slice assignments
        an entry in Python); their refs."""
        start = self._bump
        offsets = list(itertools.accumulate(sizes, initial=start))
        self._bump = offsets.pop()
        used = map(operator.add, key_lengths, lengths)
        pads = map(_PADS.__getitem__, map(operator.sub, sizes, used))
        self._arenas[self._arena_id].buf[start : self._bump] = b"".join(
            itertools.chain.from_iterable(zip(encoded, values, pads, strict=True))
        )
        return list(map(operator.or_, offsets, itertools.repeat(self._arena_id << L.OFFSET_BITS)))

    def _place_each(
        self, encoded: list[bytes], values: Sequence[Any], lengths: list[int], sizes: list[int]
    ) -> list[int]:
        """Write each entry, straight from where its value is, into a freed block of its
        size class if there is one, else at the bump pointer; their refs."""
        free, arenas = self._free, self._arenas
        arena_base, bump = self._arena_id << L.OFFSET_BITS, self._bump
        offset_bits, offset_mask = L.OFFSET_BITS, L.OFFSET_MASK
        refs = []
        for kb, value, n, size in zip(encoded, values, lengths, sizes, strict=True):
            reuse = free.get(size)
            if reuse:
                ref = reuse.pop()
            else:
                ref = arena_base | bump
                bump += size
            buf, off = arenas[ref >> offset_bits].buf, ref & offset_mask
            klen = len(kb)
            buf[off : off + klen] = kb
            buf[off + klen : off + klen + n] = value
            refs.append(ref)
        self._bump = bump
        return refs

    def _index_entries(
        self,
        encoded: list[bytes],
        key_lengths: list[int],
        lengths: list[int],
        refs: list[int],
        added: int,
    ) -> None:
        """Point the index at the placed entries, in order; ``added`` is the bytes of
        their keys and values. Must run inside the write window."""
        # One loop with everything bound locally: this is the manager's hot path.
        slots, index_buf, free, size_of = self._slots, self._index_buf, self._free, self._size_of
        find, key_at, pack_slot = self._find, self._key_at, _SLOT.pack_into
        mask, empty, deleted = self._capacity - 1, L.EMPTY, L.DELETED
        s_ref, s_vlen = L.S_REF, L.S_VLEN
        inserted = replaced_bytes = 0
        for kb, h, klen, n, ref, order in zip(
            encoded,
            map(L.key_hash, encoded),
            key_lengths,
            lengths,
            refs,
            itertools.count(self._next_order),
        ):
            # The first probe inline: with the index under MAX_LOAD most keys are
            # settled there, new (an empty slot) or overwritten (their own slot);
            # anything else takes the full search.
            base = (h & mask) * _W
            slot_ref = slots[base + s_ref]
            if slot_ref == empty:
                pack_slot(index_buf, base * 8, h | klen << 32, ref, n, order, 0)
                inserted += 1
                continue
            if not (
                slot_ref != deleted
                and slots[base] == h | klen << 32
                and key_at(slot_ref, klen) == kb
            ):
                i = find(kb, h)
                if i < 0:
                    base = (-i - 1) * _W
                    if slots[base + s_ref] == deleted:
                        self._used -= 1  # a tombstone reused: counted back below
                    pack_slot(index_buf, base * 8, h | klen << 32, ref, n, order, 0)
                    inserted += 1
                    continue
                base = i * _W
                slot_ref = slots[base + s_ref]
            # An overwrite keeps the key's place in the order, as a dict does.
            old_vlen = slots[base + s_vlen]
            old_size = size_of.get(klen + old_vlen) or L.entry_bytes(klen, old_vlen)
            free.setdefault(old_size, []).append(slot_ref)
            slots[base + s_ref] = ref
            slots[base + s_vlen] = n
            replaced_bytes += klen + old_vlen
        self._used += inserted
        self._live += inserted
        self._live_bytes += added - replaced_bytes
        self._next_order += len(refs)

    def delete_many(self, keys: list[str]) -> None:
        """Remove the keys; missing ones are ignored."""
        slots = self._slots
        with self._write_window():
            for key in keys:
                kb = _encode(key)
                i = self._find(kb, L.key_hash(kb))
                if i < 0:
                    continue
                base = i * _W
                vlen = slots[base + L.S_VLEN]
                self._release(slots[base + L.S_REF], L.entry_bytes(len(kb), vlen))
                slots[base + L.S_REF] = L.DELETED
                self._live -= 1
                self._live_bytes -= len(kb) + vlen

    def close(self) -> None:
        """Unmap and unlink every segment of the store."""
        self._header.release()
        self._slots.release()
        for segment in self._segments:
            segment.close()
            unlink_segment(segment.name)
        self._segments.clear()

    # -- internals --------------------------------------------------------------------

    def _create(self, name: str, size: int) -> Segment:
        segment = Segment.create(name, size)
        self._segments.append(segment)
        return segment

    def _write_window(self) -> _WriteWindow:
        return _WriteWindow(self)

    def _publish_counts(self) -> None:
        header = self._header
        header[L.W_LIVE_KEYS] = self._live
        header[L.W_LIVE_BYTES] = self._live_bytes
        header[L.W_NEXT_ORDER] = self._next_order

    def _key_at(self, ref: int, key_len: int) -> bytes:
        off = ref & L.OFFSET_MASK
        return self._arenas[ref >> L.OFFSET_BITS].buf[off : off + key_len]

    def _find(self, kb: bytes, h: int) -> int:
        """The slot holding ``kb``, or ``-(slot to insert it at) - 1``."""
        slots, mask = self._slots, self._capacity - 1
        want = h | len(kb) << 32
        i, free = h & mask, -1
        while True:
            base = i * _W
            ref = slots[base + L.S_REF]
            if ref == L.EMPTY:
                return -(i if free < 0 else free) - 1
            if ref == L.DELETED:
                if free < 0:
                    free = i
            elif slots[base + L.S_HASH_KLEN] == want and self._key_at(ref, len(kb)) == kb:
                return i
            i = (i + 1) & mask

    def _entry_sizes(self, key_lengths: list[int], value_lengths: list[int]) -> list[int]:
        """``L.entry_bytes`` of each entry, through a cache of the sizes seen (a cache of
        embeddings has one), which the hot loop also reads."""
        size_of = self._size_of
        totals = list(map(operator.add, key_lengths, value_lengths))
        try:
            return [size_of[total] for total in totals]
        except KeyError:
            if len(size_of) > _SIZE_CACHE_ENTRIES:
                size_of.clear()
            for total in totals:
                size_of[total] = L.entry_bytes(total, 0)
            return [size_of[total] for total in totals]

    def _release(self, ref: int, size: int) -> None:
        self._free.setdefault(size, []).append(ref)

    def _growth(self, encoded: list[bytes], lengths: list[int]) -> int:
        """Exactly how many bytes of keys and values the batch would add (overwrites
        replace, and the last value of a repeated key wins)."""
        final = dict(zip(encoded, lengths, strict=True))
        growth = 0
        for kb, n in final.items():
            i = self._find(kb, L.key_hash(kb))
            growth += n - self._slots[i * _W + L.S_VLEN] if i >= 0 else len(kb) + n
        return growth

    def _make_room(self, need: int, new_keys: int) -> None:
        """Grow the index and reserve ``need`` arena bytes past the bump pointer, so the
        batch that follows cannot fail half-applied."""
        if self._used + new_keys > L.MAX_LOAD * self._capacity:
            capacity = max(INITIAL_CAPACITY, self._capacity)
            # Grow fourfold: each rebuild re-inserts every key, in Python, so fewer of
            # them matter more than the index's few bytes per slot.
            while (self._live + new_keys) > L.MAX_LOAD * capacity / 2:
                capacity *= 4
            self._rebuild_index(capacity)
        arena = self._arenas.get(self._arena_id)
        if arena is None or self._bump + need > arena.size:
            size = max(self._arena_bytes, -(-need // RESERVE_STEP) * RESERVE_STEP)
            arena = self._create(L.arena_name(self._prefix, self._arena_id + 1), size)
            self._arena_id += 1
            self._arenas[self._arena_id] = arena
            self._bump = self._reserved_to = 0
        if self._bump + need > self._reserved_to:
            end = min(arena.size, -(-(self._bump + need) // RESERVE_STEP) * RESERVE_STEP)
            arena.reserve(self._reserved_to, end - self._reserved_to)
            self._reserved_to = end

    def reservation_wanted(self) -> tuple[Segment, int, int] | None:
        """``(arena segment, start, end)``: the arena bytes to reserve so that
        ``RESERVE_AHEAD`` bytes past the bump pointer are, or ``None`` if they are.

        Reserving costs the kernel about 0.8 ms per MiB on the virtual machines this
        was measured on, a fifth of the manager's work on a batch of new 1.5 kB
        values. The manager's reserver thread asks this under the table lock, calls
        :meth:`Segment.reserve <shmstore._segment.Segment.reserve>` without it (its
        system calls release the GIL, so the work runs beside the connection threads),
        and reports with :meth:`reserved`. A batch that finds its bytes not reserved
        yet reserves them itself, so this is only ever ahead of need."""
        arena = self._arenas.get(self._arena_id)
        if arena is None or not self.short_of_reserve():
            return None
        end = min(arena.size, -(-(self._bump + RESERVE_AHEAD) // RESERVE_STEP) * RESERVE_STEP)
        return (arena, self._reserved_to, end) if end > self._reserved_to else None

    def reserved(self, arena: Segment, end: int) -> None:
        """Record that ``arena`` is reserved up to ``end`` (from :meth:`reservation_wanted`;
        ignored if the store has moved on to a new arena segment since)."""
        if self._arenas.get(self._arena_id) is arena and end > self._reserved_to:
            self._reserved_to = end

    def short_of_reserve(self) -> bool:
        """Whether :meth:`reservation_wanted` has work to give. Safe to ask without the
        table lock, as a hint: a stale answer only delays or repeats a cheap check."""
        return self._reserved_to - self._bump < RESERVE_AHEAD

    def _rebuild_index(self, capacity: int) -> None:
        """Copy the live slots into a new index of ``capacity`` slots and switch to it."""
        generation = self._header[L.W_INDEX_GEN] + 1
        segment = self._create(L.index_name(self._prefix, generation), capacity * _W * 8)
        segment.reserve(0, segment.size)
        new = memoryview(segment.buf).cast("Q")
        old, mask = self._slots, capacity - 1
        # Strided copies find the live slots at C speed; only those are re-inserted.
        refs = old[L.S_REF :: _W].tolist()
        hashes = old[L.S_HASH_KLEN :: _W].tolist()
        taken = bytearray(capacity)
        for slot, ref in enumerate(refs):
            if ref > L.DELETED:
                i = hashes[slot] & 0xFFFFFFFF & mask
                while taken[i]:
                    i = (i + 1) & mask
                taken[i] = 1
                new[i * _W : i * _W + _W] = old[slot * _W : slot * _W + _W]
        with self._write_window():
            self._header[L.W_INDEX_GEN] = generation
            self._header[L.W_INDEX_CAPACITY] = capacity
        retired = self._index
        self._index, self._slots, self._capacity, self._used = segment, new, capacity, self._live
        self._index_buf = segment.buf
        old.release()
        if retired is not None:  # readers still mapping it keep their mapping
            self._segments.remove(retired)
            retired.close()
            unlink_segment(retired.name)


class _WriteWindow:
    """The seqlock's write side: SEQ is odd from entry to exit, and the counts a reader
    may show are published before SEQ turns even."""

    def __init__(self, table: Table) -> None:
        self._table = table

    def __enter__(self) -> None:
        self._table._header[L.W_SEQ] += 1

    def __exit__(self, *exc_info: object) -> None:
        self._table._publish_counts()
        self._table._header[L.W_SEQ] += 1
