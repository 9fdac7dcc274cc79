"""Direct reads: a proxy looks keys up in the store's shared memory itself, without a
request to the manager (layout and seqlock: :mod:`shmstore._layout`).

A read is optimistic. The reader notes SEQ, looks every key of the batch up and copies
its value out, then checks SEQ again: equal and even means no write overlapped, so the
whole batch is as of one moment; otherwise it tries again, and after
:data:`ATTEMPTS` tries it gives up and the proxy asks the manager. While a write
overlaps, what the reader sees may be torn, freed or reused, so every length and offset
is bounds-checked before use and any failure of a torn read only means "try again".

Direct reads are on where the seqlock's memory-ordering argument holds: x86-64, whose
loads are not reordered with other loads nor stores with other stores. Elsewhere, or
with ``SHMSTORE_DIRECT_READS=0`` in the environment, every read goes to the manager.
"""

from __future__ import annotations

import os
import platform
import select
import weakref

from . import _layout as L
from ._limits import Limits
from ._segment import Segment

__all__ = ["ATTEMPTS", "DIRECT_READS", "DirectReader", "read_limits"]

#: Whether proxies read shared memory directly (see the module docstring).
DIRECT_READS = platform.machine().lower() in {"x86_64", "amd64"} and os.environ.get(
    "SHMSTORE_DIRECT_READS", "1"
) not in {"0", "false", "no", "off"}

#: Optimistic reads of a batch before falling back to the manager.
ATTEMPTS = 3

_W = L.SLOT_WORDS


class _Torn(Exception):
    """What was read does not add up: a write overlapped."""


class DirectReader:
    """Read-only mappings of one store's segments, lookups in them, and a pidfd of the
    manager that wrote them, to tell without a request or a lock whether it still runs.

    :raises FileNotFoundError: the store's segments do not exist (any more).
    :raises ProcessLookupError: its manager has exited.
    :raises ValueError: they are of another layout version.
    :raises OSError: no pidfds here (Linux before 5.3): the manager must answer reads.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._manager_fd = -1
        self._close_manager_fd: weakref.finalize[[int], DirectReader] | None = None
        self._ctl = Segment.open(L.ctl_name(prefix))
        self._header = memoryview(self._ctl.buf).cast("Q")
        self._generation = 0
        self._index: Segment | None = None
        self._slots = memoryview(b"").cast("Q")
        self._mask = -1
        self._arenas: dict[int, bytes] = {}  # segment id -> its mmap
        if self._header[L.W_MAGIC] != L.MAGIC or self._header[L.W_VERSION] != L.VERSION:
            self.close()
            raise ValueError(f"segment {L.ctl_name(prefix)!r} is not a version {L.VERSION} store")
        try:
            self._manager_fd = os.pidfd_open(self._header[L.W_MANAGER_PID])
        except BaseException:
            self.close()
            raise
        # A raw descriptor, unlike an mmap, is not closed when its owner is collected.
        self._close_manager_fd = weakref.finalize(self, os.close, self._manager_fd)

    def manager_alive(self) -> bool:
        """Whether the manager that wrote these segments still runs: one ``poll`` of
        its pidfd (a poll object per call: they refuse concurrent use by threads)."""
        exited = select.poll()
        exited.register(self._manager_fd, select.POLLIN)
        return not exited.poll(0)

    @property
    def limits(self) -> Limits:
        """The limits the manager published in the header."""
        return _limits_in(self._header)

    def get_many(self, encoded_keys: list[bytes]) -> list[bytes | None] | None:
        """The values of the keys (UTF-8 with surrogatepass), as of one moment, or
        ``None`` if no consistent read was had in :data:`ATTEMPTS` tries."""
        header = self._header
        for _ in range(ATTEMPTS):
            seq = header[L.W_SEQ]
            if seq & 1:
                continue
            try:
                if header[L.W_INDEX_GEN] != self._generation:
                    self._map_index(header[L.W_INDEX_GEN], header[L.W_INDEX_CAPACITY])
                values = self._lookup(encoded_keys)
            except (_Torn, OSError, ValueError, IndexError):
                continue
            if header[L.W_SEQ] == seq:
                return values
        return None

    def _lookup(self, encoded_keys: list[bytes]) -> list[bytes | None]:
        # The readers' hot path: one loop, everything bound locally. A key is usually
        # settled at its first slot (the index stays under MAX_LOAD), so that probe is
        # inline and only a collision takes the bounded search.
        slots, mask, arenas = self._slots, self._mask, self._arenas
        crc32, empty, deleted = L.key_hash, L.EMPTY, L.DELETED
        offset_bits, offset_mask = L.OFFSET_BITS, L.OFFSET_MASK
        out: list[bytes | None] = []
        append = out.append
        for kb in encoded_keys:
            h = crc32(kb)
            klen = len(kb)
            want = h | klen << 32
            base = (h & mask) * _W
            ref = slots[base + 1]
            if ref == empty:
                append(None)
                continue
            if ref != deleted and slots[base] == want:
                buf = arenas.get(ref >> offset_bits) or self._map_arena(ref >> offset_bits)
                off = ref & offset_mask
                end = off + klen + slots[base + 2]
                if end > len(buf):
                    raise _Torn
                if buf[off : off + klen] == kb:
                    append(buf[off + klen : end])
                    continue
            append(self._probe(kb, want, (h + 1) & mask))
        return out

    def _probe(self, kb: bytes, want: int, start: int) -> bytes | None:
        """The rest of a key's search, from slot ``start`` on."""
        slots, mask, klen = self._slots, self._mask, len(kb)
        i = start
        for _ in range(mask):
            base = i * _W
            ref = slots[base + 1]
            if ref == L.EMPTY:
                return None
            if ref != L.DELETED and slots[base] == want:
                arena = ref >> L.OFFSET_BITS
                buf = self._arenas.get(arena) or self._map_arena(arena)
                off = ref & L.OFFSET_MASK
                end = off + klen + slots[base + 2]
                if end > len(buf):
                    raise _Torn
                if buf[off : off + klen] == kb:
                    return buf[off + klen : end]
            i = (i + 1) & mask
        raise _Torn  # a full table cannot be: the index was being rebuilt

    def _map_index(self, generation: int, capacity: int) -> None:
        segment = Segment.open(L.index_name(self._prefix, generation))
        if capacity & (capacity - 1) or len(segment.buf) != capacity * _W * 8:
            segment.close()
            raise _Torn
        old = self._index
        self._slots.release()
        self._index, self._generation = segment, generation
        self._slots = memoryview(segment.buf).cast("Q")
        self._mask = capacity - 1
        if old is not None:
            old.close()

    def _map_arena(self, segment_id: int) -> bytes:
        segment = Segment.open(L.arena_name(self._prefix, segment_id))
        self._arenas[segment_id] = segment.buf  # type: ignore[assignment]
        return segment.buf  # type: ignore[return-value]

    def close(self) -> None:
        """Drop every mapping, and the pidfd."""
        if self._close_manager_fd is not None:
            self._close_manager_fd()  # a finalizer runs at most once
        self._header.release()
        self._slots.release()
        for segment in (self._ctl, self._index):
            if segment is not None:
                segment.close()
        for buf in self._arenas.values():
            buf.close()  # type: ignore[attr-defined]
        self._arenas.clear()


def read_limits(prefix: str) -> Limits:
    """The limits a store's manager published in its header.

    :raises FileNotFoundError: the store's segments do not exist (any more).
    """
    segment = Segment.open(L.ctl_name(prefix))
    header = memoryview(segment.buf).cast("Q")
    try:
        return _limits_in(header)
    finally:
        header.release()
        segment.close()


def _limits_in(header: memoryview) -> Limits:
    return Limits(
        header[L.W_MAX_VALUE_BYTES], header[L.W_MAX_BATCH_BYTES], header[L.W_MAX_STORE_BYTES]
    )
