"""The hot functions in pure Python: the twin of the compiled ``_chot`` module, with the
same signatures and results (``tests/test_hot.py`` holds them side by side).

They are the only code that probes the index or reads entries; the layout and the
consistency argument are :mod:`shmstore._layout`'s. Arguments, for every function:

* ``ctl``: the ``ctl`` segment as a ``memoryview`` cast to ``"Q"`` (header and stripes);
* ``slots``: an index segment, the same way; its capacity is ``len(slots) // SLOT_WORDS``;
* ``arenas``: a list whose item ``n`` is arena segment ``n``'s mapping (an ``mmap``) or
  ``None`` if not mapped here;
* ``keys``: a list of keys as UTF-8 ``bytes`` (``surrogatepass``); :func:`lookup` also
  takes them as ``str``, encoded so.

The writer's functions (everything but :func:`lookup`, :func:`key_hash`,
:func:`manager_alive`, :func:`parse_mset`, :func:`split_bytes_pairs` and
:func:`stage_values`) run in the manager only, one batch at a
time, and trust what they read; :func:`lookup` runs in every proxy against memory the
manager is changing, and checks everything it reads; :func:`parse_mset` runs in the
manager on what a client sent, and checks everything it reads.
"""

from __future__ import annotations

import select
import threading
import zlib
from collections.abc import Sequence
from itertools import accumulate, count

from .. import _layout as L
from .. import _protocol as proto
from .._errors import ProtocolError

# The manager imports this module: typing is for the type checker only, kept out of that
# process's memory (annotations are not evaluated at run time).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "STALE",
    "TORN",
    "count_found",
    "find",
    "hold_liveness",
    "index_delete",
    "index_set",
    "key_hash",
    "lookup",
    "manager_alive",
    "parse_mset",
    "parse_mset_shm",
    "place",
    "place_run",
    "rebuild",
    "release_liveness",
    "split_bytes_pairs",
    "stage_values",
    "stripes_enter",
    "stripes_exit",
]

#: :func:`lookup`'s result when a write overlapped the read (or what it read does not
#: add up): read again.
TORN = -1
#: :func:`lookup`'s result when the store's index is not the generation given: map the
#: new one and read again.
STALE = -2

key_hash = L.key_hash  # the layout defines it: CRC-32, as zlib.crc32

_W = L.SLOT_WORDS
_STRIPE0 = L.HEADER_WORDS
_STRIPE_MASK = L.STRIPES - 1
_GEN = L.W_INDEX_GEN


def lookup(
    ctl: memoryview,
    slots: memoryview,
    generation: int,
    arenas: list[Any],
    keys: list[Any],
    visited: Any = None,
    now: int = 0,
) -> list[bytes | None] | int:
    """Each key's value (``bytes``) or ``None``, as of one moment; or :data:`TORN`,
    :data:`STALE`, or a positive arena segment id that ``arenas`` lacks (map it and
    read again). Never raises on what it reads: every offset and length is checked.

    :param visited: the store's visited bytes (a writable buffer, one byte per slot),
        or ``None``: a hit sets its slot's byte, if not set yet (SIEVE).
    :param now: ``time.monotonic_ns()``: an entry whose EXPIRES is set and not after
        ``now`` is a miss.
    """
    mask = len(slots) // _W - 1
    if mask < 0 or mask & (mask + 1):
        return TORN  # not a power of two of slots: not an index the manager made
    if ctl[_GEN] != generation:
        return STALE
    crc32, stripe0, stripe_mask = zlib.crc32, _STRIPE0, _STRIPE_MASK
    offset_bits, offset_mask = L.OFFSET_BITS, L.OFFSET_MASK
    n_arenas = len(arenas)
    out: list[bytes | None] = []
    append = out.append
    stripes: list[int] = []
    versions: list[int] = []
    for kb in keys:
        if type(kb) is str:
            kb = kb.encode("utf-8", "surrogatepass")
        h = crc32(kb)
        stripe = stripe0 + (h & stripe_mask)
        version = ctl[stripe]
        if version & 1:
            return TORN
        stripes.append(stripe)
        versions.append(version)
        klen = len(kb)
        want = h | klen << 32
        i = h & mask
        for _ in range(mask + 1):
            base = i * _W
            ref = slots[base + 1]  # REF first: see _layout
            if ref == 0:
                append(None)
                break
            if ref != 1 and slots[base] == want:
                arena = ref >> offset_bits
                buf = arenas[arena] if arena < n_arenas else None
                if buf is None:
                    return arena if arena else TORN
                off = ref & offset_mask
                end = off + klen + slots[base + 2]
                if end > len(buf):
                    return TORN
                if buf[off : off + klen] == kb:
                    expires = slots[base + 4]
                    if expires and now >= expires:
                        append(None)  # expired: a miss for every reader
                        break
                    if visited is not None and i < len(visited) and not visited[i]:
                        visited[i] = 1
                    append(buf[off + klen : end])
                    break
            i = (i + 1) & mask
        else:
            return TORN  # no empty slot: not an index the manager would leave
    if ctl[_GEN] != generation or [ctl[s] for s in stripes] != versions:
        return TORN
    return out


def manager_alive(pidfd: int, ctl: memoryview | None = None) -> bool:
    """Whether the process of ``pidfd`` still runs: one ``poll`` of it, without blocking
    (a poll object per call: they refuse concurrent use by threads). The compiled twin
    first reads the liveness mutex in the store's header ``ctl`` (see
    :func:`hold_liveness`) and polls only if that does not show the manager alive; this
    one always polls.

    :raises ValueError: ``ctl`` is not a store's header (the compiled twin).
    """
    exited = select.poll()
    exited.register(pidfd, select.POLLIN)
    return not exited.poll(0)


def hold_liveness(ctl: memoryview) -> bool:
    """In the manager's main thread, once: hold a robust process-shared mutex in the
    header's words ``W_LIVENESS_MUTEX`` on and publish this thread's id in
    ``W_LIVENESS_TID``, so readers tell that the manager runs by one load (the kernel
    marks the mutex when its holder dies); whether it did. Pure Python cannot hold a
    pthread mutex: this one does nothing and returns ``False``, and readers poll the
    manager's pidfd.
    """
    return False


def release_liveness(ctl: memoryview) -> None:
    """Before the manager unmaps its header (``ctl``, its words): clear
    ``W_LIVENESS_TID`` (readers poll the pidfd from then on) and let go of the mutex
    :func:`hold_liveness` took."""
    ctl[L.W_LIVENESS_TID] = 0


#: Orders this process's threads' additions to their reader slots (the compiled twin
#: has the GIL for that).
_COUNT_LOCK = threading.Lock()


def count_found(words: memoryview, found: list[Any]) -> None:
    """Add a batch's hits (values) and misses (``None``) in ``found`` to the reader slot
    ``words`` (``READER_WORDS`` 64-bit words, writable).

    :raises ValueError: ``words`` is not one reader slot.
    """
    if len(words) < L.READER_WORDS:
        raise ValueError("words must be one aligned reader slot")
    misses = found.count(None)
    with _COUNT_LOCK:
        words[L.R_HITS] += len(found) - misses
        words[L.R_MISSES] += misses


def find(slots: memoryview, arenas: list[Any], keys: list[bytes]) -> list[int]:
    """The slot of each key, or -1 where it is not in the index."""
    mask = len(slots) // _W - 1
    out = []
    for kb in keys:
        i = _find(slots, mask, arenas, kb, zlib.crc32(kb))
        out.append(i if i >= 0 else -1)
    return out


def _find(slots: memoryview, mask: int, arenas: list[Any], kb: bytes, h: int) -> int:
    """The slot holding ``kb``, or ``-(slot to insert it at) - 1``."""
    want = h | len(kb) << 32
    i, tomb = h & mask, -1
    klen = len(kb)
    while True:
        base = i * _W
        ref = slots[base + 1]
        if ref == L.EMPTY:
            return -(i if tomb < 0 else tomb) - 1
        if ref == L.DELETED:
            if tomb < 0:
                tomb = i
        elif slots[base] == want:
            off = ref & L.OFFSET_MASK
            if arenas[ref >> L.OFFSET_BITS][off : off + klen] == kb:
                return i
        i = (i + 1) & mask


# The stripes of the last batch entered, kept for its exit: (keys, stripes). The writer
# applies one batch at a time, so the exit that follows an enter is that batch's.
_entered: tuple[list[bytes] | None, list[int]] = (None, [])


def stripes_enter(ctl: memoryview, keys: list[bytes]) -> None:
    """Make the stripe of every key odd (each once, however many keys share it)."""
    global _entered
    stripe0, stripe_mask = _STRIPE0, _STRIPE_MASK
    stripes = list({stripe0 + (h & stripe_mask) for h in map(zlib.crc32, keys)})
    for s in stripes:
        if not ctl[s] & 1:
            ctl[s] += 1
    _entered = (keys, stripes)


def stripes_exit(ctl: memoryview, keys: list[bytes]) -> None:
    """Make the stripe of every key even again."""
    entered_keys, stripes = _entered
    if entered_keys is not keys:
        stripe0, stripe_mask = _STRIPE0, _STRIPE_MASK
        stripes = list({stripe0 + (h & stripe_mask) for h in map(zlib.crc32, keys)})
    for s in stripes:
        if ctl[s] & 1:
            ctl[s] += 1


def index_set(
    slots: memoryview,
    arenas: list[Any],
    keys: list[bytes],
    refs: list[int],
    vlens: list[int],
    first_order: int,
    expires: int = 0,
    visited: Any = None,
) -> tuple[int, int, list[int], list[int]]:
    """Point each key's slot at its entry, in order (the last of a repeated key wins);
    a new key gets insertion number ``first_order + its position``, an overwritten one
    keeps its own. Every slot written gets EXPIRES ``expires`` (a
    ``time.monotonic_ns()`` deadline, 0: never); a new key's visited byte is cleared.
    Inside the write window (:func:`stripes_enter`); the index must have room for
    every key.

    :returns: ``(inserted, tombstones_reused, freed_refs, freed_sizes)``: the keys
        added, how many of them took a deleted slot, and the entries overwritten (their
        refs, and their key and value bytes).
    """
    mask = len(slots) // _W - 1
    inserted = reused = 0
    freed_refs: list[int] = []
    freed_sizes: list[int] = []
    crc32, empty, deleted = zlib.crc32, L.EMPTY, L.DELETED
    offset_bits, offset_mask = L.OFFSET_BITS, L.OFFSET_MASK
    if not len(keys) == len(refs) == len(vlens):
        raise ValueError("keys, refs and vlens differ in length")
    for kb, ref, n, order in zip(keys, refs, vlens, count(first_order)):
        h = crc32(kb)
        klen = len(kb)
        want = h | klen << 32
        # The first probe inline: under MAX_LOAD most keys settle there.
        base = (h & mask) * _W
        slot_ref = slots[base + 1]
        if slot_ref == empty:
            i = -(h & mask) - 1
        elif slot_ref != deleted and slots[base] == want and (
            arenas[slot_ref >> offset_bits][
                (slot_ref & offset_mask) : (slot_ref & offset_mask) + klen
            ]
            == kb
        ):
            i = h & mask
        else:
            i = _find(slots, mask, arenas, kb, h)
        if i < 0:
            base = (-i - 1) * _W
            if slots[base + 1] == deleted:
                reused += 1
            slots[base] = want
            slots[base + 2] = n
            slots[base + 3] = order
            slots[base + 4] = expires
            if visited is not None and -i - 1 < len(visited):
                visited[-i - 1] = 0  # a new key starts unvisited
            slots[base + 1] = ref  # REF last: see _layout
            inserted += 1
            continue
        base = i * _W
        freed_refs.append(slots[base + 1])
        freed_sizes.append(klen + slots[base + 2])
        slots[base + 2] = n
        slots[base + 4] = expires
        slots[base + 1] = ref
    return inserted, reused, freed_refs, freed_sizes


def index_delete(
    slots: memoryview, arenas: list[Any], keys: list[bytes]
) -> tuple[list[int], list[int]]:
    """Mark each key's slot deleted; missing keys are ignored. Inside the write window.

    :returns: ``(freed_refs, freed_sizes)`` of the entries removed.
    """
    mask = len(slots) // _W - 1
    freed_refs: list[int] = []
    freed_sizes: list[int] = []
    for kb in keys:
        i = _find(slots, mask, arenas, kb, zlib.crc32(kb))
        if i < 0:
            continue
        base = i * _W
        freed_refs.append(slots[base + 1])
        freed_sizes.append(len(kb) + slots[base + 2])
        slots[base + 1] = L.DELETED
    return freed_refs, freed_sizes


def place(arenas: list[Any], refs: list[int], keys: list[bytes], values: Sequence[Any]) -> None:
    """Write each entry, its key then its value, at its ref. ``values`` are bytes-like.
    Entries laid end to end in one arena segment (a batch of new small entries) are
    joined and copied in one go: two copies at C speed cost less than two slice
    assignments an entry in Python.

    :raises ValueError: an entry would not fit in its segment (a bug in the caller).
    """
    if not refs:
        return
    lengths = [
        len(kb) + (v.nbytes if type(v) is memoryview else len(v))
        for kb, v in zip(keys, values, strict=True)
    ]
    first = refs[0]
    arena, start = first >> L.OFFSET_BITS, first & L.OFFSET_MASK
    blocks = [_SIZES.get(n) or _size(n) for n in lengths]
    end = start + sum(blocks)
    # Joined only if each entry's block ends where the next begins: a block between
    # them would be overwritten by the padding.
    if end - start <= 1 << 20 and refs == list(
        accumulate(blocks[:-1], initial=first)
    ):
        buf = arenas[arena]
        if end > len(buf):
            raise ValueError(f"entries at {first:#x} overrun arena segment {arena}")
        parts = []
        for kb, v, n, block in zip(keys, values, lengths, blocks, strict=True):
            parts.append(kb)
            parts.append(v)
            if block != n:
                parts.append(_pad(block - n))
        buf[start:end] = b"".join(parts)
        return
    for kb, v, ref, n in zip(keys, values, refs, lengths, strict=True):
        buf, off = arenas[ref >> L.OFFSET_BITS], ref & L.OFFSET_MASK
        if off + n > len(buf):
            raise ValueError(f"entry at {ref:#x} overruns its arena segment")
        klen = len(kb)
        buf[off : off + klen] = kb
        buf[off + klen : off + n] = v


def place_run(
    arenas: list[Any], refs: list[int], keys: list[bytes], source: Any, lengths: list[int]
) -> None:
    """:func:`place` for values laid end to end in ``source``, a bytes-like object (a
    staging segment): value ``k`` is ``source[sum(lengths[:k]) : sum(lengths[:k + 1])]``.

    :raises ValueError: the values overrun ``source``, or an entry would not fit in
        its segment (a bug in the caller).
    """
    whole = memoryview(source).cast("B")
    try:
        if sum(lengths) > whole.nbytes or min(lengths, default=0) < 0:
            raise ValueError("the values overrun their source")
        views, offset = [], 0
        for n in lengths:
            views.append(whole[offset : offset + n])
            offset += n
        try:
            place(arenas, refs, keys, views)
        finally:
            for view in views:
                view.release()
    finally:
        whole.release()


_TUPLE = frozenset({tuple})
_STR = frozenset({str})
_BYTES = frozenset({bytes})


def split_bytes_pairs(
    pairs: list[Any],
) -> tuple[list[str], list[bytes], list[int], int, int] | None:
    """A proxy's ``mset`` batch of ``(str, bytes)`` pairs taken apart in one pass:
    ``(keys, values, sizes, value_bytes, key_chars)``, where ``sizes`` are the values'
    lengths in bytes, ``value_bytes`` their sum and ``key_chars`` the keys' lengths in
    characters added up (``([], [], [], 0, 0)`` for no pairs).

    ``None`` when an item is not a ``tuple`` of two, its key not exactly a ``str`` or
    its value not exactly ``bytes``: the caller's general path then takes the batch
    apart, and names the item if it is wrong.

    :raises TypeError: ``pairs`` is not a ``list``.
    """
    if type(pairs) is not list:
        raise TypeError("pairs must be a list")
    if not set(map(type, pairs)) <= _TUPLE:
        return None
    try:
        keys = [key for key, _ in pairs]
        values = [value for _, value in pairs]
    except ValueError:  # a tuple of another length
        return None
    if not (set(map(type, keys)) <= _STR and set(map(type, values)) <= _BYTES):
        return None
    sizes = list(map(len, values))
    return keys, values, sizes, sum(sizes), sum(map(len, keys))


def stage_values(target: Any, values: list[bytes]) -> int:
    """Copy ``values`` end to end into ``target``, a writable ``mmap`` or ``bytearray``
    (a proxy's staging segment, read back by :func:`place_run`); the bytes written.

    :raises TypeError: a value is not ``bytes`` (its position named).
    :raises ValueError: they would overrun ``target``; nothing was written.
    """
    if not set(map(type, values)) <= {bytes}:
        position = next(i for i, value in enumerate(values) if type(value) is not bytes)
        raise TypeError(f"value at position {position} is not bytes")
    total = sum(map(len, values))
    if total > len(target):  # an mmap or a bytearray: its length is its bytes
        raise ValueError("the values overrun their target")
    offset = 0
    for value in values:
        end = offset + len(value)
        target[offset:end] = value
        offset = end
    return total


_SIZES: dict[int, int] = {}
_PADS: dict[int, bytes] = {}


def _size(n: int) -> int:
    if len(_SIZES) > 4096:
        _SIZES.clear()
    size = _SIZES[n] = L.entry_bytes(n, 0)
    return size


def _pad(n: int) -> bytes:
    pad = _PADS.get(n)
    if pad is None:
        pad = bytes(n)
        if len(_PADS) < 4096:
            _PADS[n] = pad
    return pad


def rebuild(
    old: memoryview, new: memoryview, old_visited: Any = None, new_visited: Any = None
) -> int:
    """Copy the live slots of index ``old`` into the empty index ``new``; how many. A
    slot's visited byte moves with it, from ``old_visited`` to ``new_visited`` (buffers
    of one byte per slot; none if ``new_visited`` is ``None``)."""
    mask = len(new) // _W - 1
    # Strided copies find the live slots at C speed; only those are re-inserted.
    refs = old[1::_W].tolist()
    hashes = old[0::_W].tolist()
    taken = bytearray(mask + 1)
    live = 0
    for slot, ref in enumerate(refs):
        if ref > L.DELETED:
            i = hashes[slot] & 0xFFFFFFFF & mask
            while taken[i]:
                i = (i + 1) & mask
            taken[i] = 1
            new[i * _W : i * _W + _W] = old[slot * _W : slot * _W + _W]
            if new_visited is not None and i < len(new_visited):
                new_visited[i] = (
                    old_visited[slot] if old_visited is not None and slot < len(old_visited) else 0
                )
            live += 1
    return live


#: How every ``mset`` request frame the proxies pack begins: a msgpack array of 4
#: (fixarray), then the opcode as a positive fixint.
_MSET_START = bytes([0x94, proto.MSET])


def parse_mset(frame: bytes) -> tuple[list[bytes], list[bytes], int | None] | None:
    """An ``[MSET, keys, values, ttl]`` request frame (:mod:`shmstore._protocol`),
    decoded for :meth:`~shmstore._table.Table.set_encoded`: ``(keys, values, ttl)``,
    the keys as UTF-8 ``bytes`` (``surrogatepass``), exactly as
    :func:`~shmstore._protocol.parse_request` and encoding its keys would give them.

    ``None`` means only "parse it in full": for any frame that is not such a request,
    and for one in a form the packer does not write (an opcode or a ``ttl`` encoded
    in a longer form than needed; the compiled twin takes only the packer's forms).
    The caller then calls :func:`~shmstore._protocol.parse_request`, which names what
    is wrong with the frame, or accepts it. Nothing is raised.
    """
    if type(frame) is not bytes or frame[:2] != _MSET_START:
        return None
    try:
        _mset, (keys, values, ttl) = proto.parse_request(frame)  # MSET, by its start
    except ProtocolError:
        return None
    return proto.encode_keys(keys), values, ttl


#: How every staged ``mset`` request frame the proxies pack begins: a msgpack array
#: of 5, then the opcode.
_MSET_SHM_START = bytes([0x95, proto.MSET_SHM])


def parse_mset_shm(frame: bytes) -> tuple[list[bytes], str, list[int], int | None] | None:
    """An ``[MSET_SHM, keys, segment, lengths, ttl]`` request frame (a batch whose
    values wait in a staging segment, :mod:`shmstore._staging`), decoded as
    :func:`parse_mset` decodes an ``mset``: ``(keys, segment, lengths, ttl)``, the keys
    as UTF-8 ``bytes``, everything else exactly as
    :func:`~shmstore._protocol.parse_request` gives it; ``None``: parse it in full (any
    other frame, or one in a form the packer does not write). Nothing is raised.
    """
    if type(frame) is not bytes or frame[:2] != _MSET_SHM_START:
        return None
    try:
        _op, (keys, segment, lengths, ttl) = proto.parse_request(frame)
    except ProtocolError:
        return None
    return proto.encode_keys(keys), segment, lengths, ttl
