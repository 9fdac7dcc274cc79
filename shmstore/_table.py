"""The manager's key-value state, in shared memory (layout: :mod:`shmstore._layout`):
the header, an :class:`~shmstore._index.Index` and an :class:`~shmstore._arena.Arena`,
changed one batch at a time by the hot functions (:mod:`shmstore._hot`), with the
cache policy's state in the manager's memory: the SIEVE queue
(:class:`~shmstore._sieve.Sieve`) and the deadlines of entries that expire
(:class:`~shmstore._expiry.Deadlines`).

Only the manager writes, one batch at a time under its table lock, so the methods here
need no lock of their own. Before a batch changes anything, the index is grown and
every arena byte the batch could need is reserved, so running out of ``/dev/shm``
raises :class:`StoreFullError` with nothing of the batch applied. Then the batch's
entries are written into blocks no slot points at, and only the slot changes happen
inside the write window, under the stripes of the batch's keys, so readers of other
keys never notice the batch at all. Entries a batch evicts, and expired ones it
reclaims, are removed in that same window, so a reader sees the batch and the room
made for it together, and the store never holds more than ``max_store_bytes``.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence

from . import _hot
from . import _layout as L
from ._arena import Arena
from ._errors import StoreTooLargeError
from ._expiry import Deadlines
from ._index import Index
from ._limits import Limits
from ._options import Options
from ._policy import Policy
from ._protocol import encode_keys
from ._segment import Segment, unlink_segment
from ._sieve import Sieve

# typing is imported for the type checker only: the manager imports this module, and
# at run time typing would cost that process memory for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ARENA_BYTES", "LARGE_VALUE_BYTES", "RunOfValues", "Table"]

#: Virtual size of an arena segment; pages are reserved as they are used.
ARENA_BYTES = 256 << 20
#: Values of at least this many bytes (16 pages) are copied into the arena by the
#: kernel (:meth:`Arena.write <shmstore._arena.Arena.write>`) when a batch has only
#: such values.
LARGE_VALUE_BYTES = 64 << 10
#: Stale deadline records (of keys overwritten or deleted since) kept before the
#: records are made again from the index.
_STALE_DEADLINES = 1 << 16


class RunOfValues:
    """A batch's values laid end to end in one buffer (a staging segment): value ``k``
    is ``buffer[sum(lengths[:k]) : sum(lengths[:k + 1])]``. Taken by
    :meth:`Table.set_encoded` in place of a list of values, and copied from the buffer
    straight into the arena."""

    __slots__ = ("buffer", "lengths")

    def __init__(self, buffer: Any, lengths: list[int]) -> None:
        self.buffer = buffer
        self.lengths = lengths


def _write_large(
    arena: Arena, refs: list[int], keys: list[bytes], values: Any, lengths: list[int]
) -> None:
    """:meth:`Arena.write` of a batch's entries, its values a list or a
    :class:`RunOfValues`."""
    if not isinstance(values, RunOfValues):
        arena.write(refs, keys, values)
        return
    whole = memoryview(values.buffer).cast("B")
    views: list[memoryview] = []
    try:
        if sum(lengths) > whole.nbytes:  # as place_run: checked before anything is written
            raise ValueError("the values overrun their source")
        starts = itertools.accumulate(lengths, initial=0)  # one more than the values
        views = [whole[start : start + n] for start, n in zip(starts, lengths, strict=False)]
        arena.write(refs, keys, views)
    finally:
        for view in views:
            view.release()
        whole.release()


class Table:
    """A ``str -> bytes`` map with ``InMemoryByteStore``'s batch semantics, kept in the
    shared-memory segments named by ``prefix`` (created here, removed by :meth:`close`).

    :param arena_bytes: virtual size of each arena segment.
    :param limits: enforced by :meth:`set_many`, and published in the header for
        proxies to check before they send (default: :meth:`Limits.resolve`).
    :param options: the store's data-path options, published in the header for every
        proxy; ``options.implementation`` names the hot functions used here too
        (default: from this process's environment).
    :param policy: the store's cache policy, published in the header (default: no
        eviction, no time to live).
    """

    def __init__(
        self,
        prefix: str,
        arena_bytes: int = ARENA_BYTES,
        limits: Limits | None = None,
        options: Options | None = None,
        policy: Policy | None = None,
    ) -> None:
        self._limits = limits or Limits.resolve()
        options = options or Options.from_environment()
        self.policy = policy = policy or Policy.resolve()
        self._hot = hot = _hot.load(options.implementation)
        self._ctl = Segment.create(L.ctl_name(prefix), L.CTL_BYTES)
        try:
            self._ctl.reserve(0, L.CTL_BYTES)
            self._header = header = memoryview(self._ctl.buf).cast("Q")
            header[L.W_MAGIC] = L.MAGIC
            header[L.W_VERSION] = L.VERSION
            header[L.W_MAX_VALUE_BYTES] = self._limits.max_value_bytes
            header[L.W_MAX_BATCH_BYTES] = self._limits.max_batch_bytes
            header[L.W_MAX_STORE_BYTES] = self._limits.max_store_bytes
            header[L.W_MANAGER_PID] = os.getpid()
            options.publish(header)
            policy.publish(header)
            self.index = Index(prefix, header, hot, visited=policy.sieve)
        except BaseException:
            self._ctl.close()
            unlink_segment(self._ctl.name)
            raise
        self.arena = Arena(prefix, arena_bytes)
        self._live = self._live_bytes = self._next_order = 0
        self._sieve = Sieve() if policy.sieve else None
        self._deadlines = Deadlines()

    @property
    def header(self) -> memoryview:
        """The store's ``ctl`` words (header and stripes)."""
        return self._header

    # -- reads (the manager's own, for proxies that cannot read directly) --------------

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The value of each key in order, ``None`` for a miss; duplicates are kept."""
        index, header = self.index, self._header
        found = self._hot.lookup(
            header, index.slots, index.generation, self.arena.buffers,
            encode_keys(keys), index.visited, time.monotonic_ns(),
        )
        assert type(found) is list, "no write is under way while the table lock is held"
        misses = found.count(None)
        header[L.W_STATS_SEQ] += 1
        header[L.W_HITS] += len(found) - misses
        header[L.W_MISSES] += misses
        header[L.W_STATS_SEQ] += 1
        return found

    def keys(self, prefix: str | None) -> list[str]:
        """The keys for which ``key.startswith(prefix)``, in insertion order; all if ``None``."""
        slots, buffers = self.index.slots, self.arena.buffers
        refs = slots[L.S_REF :: L.SLOT_WORDS].tolist()
        orders = slots[L.S_ORDER :: L.SLOT_WORDS].tolist()
        lengths = slots[L.S_HASH_KLEN :: L.SLOT_WORDS].tolist()
        expires = slots[L.S_EXPIRES :: L.SLOT_WORDS].tolist()
        now = time.monotonic_ns()
        found = []
        for i, ref in enumerate(refs):
            if ref > L.DELETED and not 0 < expires[i] <= now:
                off = ref & L.OFFSET_MASK
                buf = buffers[ref >> L.OFFSET_BITS]
                found.append((orders[i], buf[off : off + (lengths[i] >> 32)]))  # type: ignore[index]
        found.sort()
        keys = [kb.decode("utf-8", "surrogatepass") for _, kb in found]
        return [k for k in keys if k.startswith(prefix)] if prefix else keys

    def capture(self) -> tuple[list[tuple[int, int, int, int, int]], int]:
        """The live entries as of now, for a snapshot: ``(order, ref, key length, value
        length, deadline)`` each, in insertion order, and the moment's
        ``time.monotonic_ns()``. The arena keeps their blocks unchanged until
        :meth:`release_capture`, so they may be read without the table lock."""
        slots = self.index.slots
        refs = slots[L.S_REF :: L.SLOT_WORDS].tolist()
        lengths = slots[L.S_HASH_KLEN :: L.SLOT_WORDS].tolist()
        vlens = slots[L.S_VLEN :: L.SLOT_WORDS].tolist()
        orders = slots[L.S_ORDER :: L.SLOT_WORDS].tolist()
        expires = slots[L.S_EXPIRES :: L.SLOT_WORDS].tolist()
        now = time.monotonic_ns()
        live = [
            (orders[i], ref, lengths[i] >> 32, vlens[i], expires[i])
            for i, ref in enumerate(refs)
            if ref > L.DELETED and not 0 < expires[i] <= now
        ]
        live.sort()
        self.arena.hold()
        return live, now

    def release_capture(self) -> None:
        """End what :meth:`capture` began: freed blocks are reused again."""
        self.arena.unhold()

    # -- writes ---------------------------------------------------------------------

    def set_many(
        self,
        keys: Sequence[str],
        values: Sequence[Any],
        acknowledge: Callable[[], None] | None = None,
        ttl_ns: int | None = None,
        values_stay: bool = False,
    ) -> None:
        """Store the pairs in order, so the last value of a repeated key wins.

        :param values: bytes-like objects, as many as ``keys``. A list of ``bytes``
            is taken as this process's own and copied after ``acknowledge``; anything
            else before it, unless ``values_stay``.
        :param values_stay: the values stay as they are until this returns, whatever
            ``acknowledge`` tells the client (views of a staging segment, which the
            client reuses only after a later reply): copied after ``acknowledge``.
        :param acknowledge: called once the batch can no longer fail, with the write
            window open on its keys' stripes, before the index changes (the manager
            replies there, so its client prepares the next request while this one is
            applied). A reader that starts after the call
            finds those stripes odd until the whole batch is in, so it never misses
            what was acknowledged. It must not raise.
        :param ttl_ns: the batch's time to live in ns, 0 for none; ``None``: the
            policy's default. The deadline is taken now.
        :raises LimitExceededError: a value, the batch or the store would be over its
            limit (the subclass names which; with SIEVE eviction, only a batch whose
            own keys and values are over ``max_store_bytes``); nothing was applied.
        :raises StoreFullError: ``/dev/shm`` cannot hold the batch; nothing was applied.
        """
        self.set_encoded(encode_keys(keys), values, acknowledge, ttl_ns, values_stay)

    def set_encoded(
        self,
        encoded: list[bytes],
        values: Sequence[Any] | RunOfValues,
        acknowledge: Callable[[], None] | None = None,
        ttl_ns: int | None = None,
        values_stay: bool = False,
    ) -> None:
        """:meth:`set_many` with the keys given as their UTF-8 ``bytes``
        (``surrogatepass``), as an ``mset`` request carries them
        (:func:`shmstore._hot.fallback.parse_mset`), and the values either as there or
        as one :class:`RunOfValues` (a staged batch's); the same arguments otherwise,
        the same errors, and the same all-or-nothing."""
        hot, arena, index = self._hot, self.arena, self.index
        # values are bytes or 1-D byte memoryviews, or one run of them
        if isinstance(values, RunOfValues):
            run, lengths = values, values.lengths
        else:
            run, lengths = None, list(map(len, values))
        self._limits.check_batch(encoded, lengths)
        now = time.monotonic_ns()
        ttl = self.policy.ttl_ns if ttl_ns is None else ttl_ns
        expires = now + ttl if ttl else 0
        used = list(map(operator.add, map(len, encoded), lengths))
        added = sum(used)
        # Expired entries are reclaimed by the first write after their deadline, in its
        # window; one of the batch's own keys then comes back as a new key.
        expired, expired_bytes = self._expired(now)
        removed, evicted = expired, 0
        sieve = self._sieve
        new_keys: list[bytes] = []
        room = self._limits.max_store_bytes - self._live_bytes + expired_bytes
        if sieve is not None or added > room:
            final = dict(zip(encoded, lengths, strict=True))
            expired_set = set(expired)
            growth, new_keys = self._growth(final, expired_set)
            over = growth - room
            if over > 0:
                own = sum(map(len, final)) + sum(final.values())
                if sieve is None or own > self._limits.max_store_bytes:
                    total = self._live_bytes - expired_bytes + growth
                    raise StoreTooLargeError(
                        f"the store would hold {total if sieve is None else own} bytes of keys "
                        f"and values, over max_store_bytes={self._limits.max_store_bytes}"
                    )
                protected: Collection[bytes] = final.keys() | expired_set if expired else final
                assert index.visited is not None
                victims, freed = sieve.select(
                    over, protected, self._slots_of, index.slots, index.visited
                )
                if freed < over:  # cannot be, as the batch alone fits: never overshoot
                    raise StoreTooLargeError(
                        f"no room for the batch: {over - freed} bytes over "
                        f"max_store_bytes={self._limits.max_store_bytes} after eviction"
                    )
                removed, evicted = expired + victims, len(victims)
        sizes = arena.entry_sizes(used)
        index.make_room(self._live, len(encoded))
        # A batch of large values only is written with pwritev, into pages reserved but
        # not populated (Arena.write); any other through the mapping. (The sum first: a
        # batch of small values then costs no scan.)
        large = (
            added >= LARGE_VALUE_BYTES * len(lengths)
            and min(lengths, default=0) >= LARGE_VALUE_BYTES
        )
        arena.make_room(arena.bump_need(sizes), populate=not large)
        refs = arena.allocate(sizes)
        # Entries go into blocks no slot points at (a reused block was freed by an
        # earlier batch, which moved its key's stripe on), so readers of other keys
        # never notice them. Values that stay (this process's own, sent in the
        # request, or in a staging segment the client does not reuse yet) are written
        # after the acknowledgment, so the client's wait does not include the copy;
        # others before it.
        owned = values_stay or (type(values) is list and set(map(type, values)) <= {bytes})

        def place() -> None:
            if large:
                _write_large(arena, refs, encoded, run or values, lengths)
            elif run is not None:
                hot.place_run(arena.buffers, refs, encoded, run.buffer, lengths)
            else:
                hot.place(arena.buffers, refs, encoded, values)

        if not owned:
            place()
        with self._window(encoded + removed if removed else encoded):
            if acknowledge is not None:
                acknowledge()
            if owned:
                place()
            if removed:
                self._remove(removed)
                self._header[L.W_EVICTIONS] += evicted
                self._header[L.W_EXPIRATIONS] += len(removed) - evicted
            inserted, reused, freed_refs, freed_used = hot.index_set(
                index.slots, arena.buffers, encoded, refs, lengths, self._next_order,
                expires, index.visited,
            )
            arena.release(freed_refs, freed_used)
            index.used += inserted - reused
            self._live += inserted
            self._live_bytes += added - sum(freed_used)
            self._next_order += len(refs)
            self._header[L.W_SETS] += len(encoded)
            self._publish_counts()
            if sieve is not None:
                sieve.insert(new_keys)
            if expires:
                self._deadlines.add(expires, encoded)
                if self._deadlines.recorded > 2 * self._live + _STALE_DEADLINES:
                    self._record_deadlines_again()

    def reserve_ahead(self) -> bool:
        """One step of :meth:`Arena.reserve_ahead <shmstore._arena.Arena.reserve_ahead>`,
        published in the header for the proxies that prefault ahead of it; whether
        there was anything to do."""
        stepped = self.arena.reserve_ahead()
        if stepped:
            self._header[L.W_RESERVED] = self.arena.reserved
        return stepped

    def delete_many(self, keys: list[str]) -> None:
        """Remove the keys; missing ones are ignored."""
        encoded = encode_keys(keys)
        with self._window(encoded):
            self._header[L.W_DELETES] += self._remove(encoded)

    def next_deadline_before(self, deadline: int) -> bool:
        """Whether an entry's deadline earlier than ``deadline`` is recorded."""
        recorded = self._deadlines.next
        return recorded is not None and recorded < deadline

    def sweep(self, limit: int = 4096) -> int | None:
        """Reclaim up to about ``limit`` expired entries, in one write window (the
        manager's periodic sweep, so an idle store does not hold expired data).

        :returns: the next deadline recorded (``time.monotonic_ns()``), or ``None``.
        """
        expired, _ = self._expired(time.monotonic_ns(), limit)
        if expired:
            with self._window(expired):
                self._remove(expired)
                self._header[L.W_EXPIRATIONS] += len(expired)
        return self._deadlines.next

    def close(self) -> None:
        """Unmap and unlink every segment of the store."""
        self.arena.close()
        self.index.close()
        self._header.release()
        self._ctl.close()
        unlink_segment(self._ctl.name)

    # -- internals --------------------------------------------------------------------

    def _publish_counts(self) -> None:
        header = self._header
        header[L.W_LIVE_KEYS] = self._live
        header[L.W_LIVE_BYTES] = self._live_bytes
        header[L.W_NEXT_ORDER] = self._next_order
        header[L.W_RESERVED] = self.arena.reserved

    @contextlib.contextmanager
    def _window(self, encoded: list[bytes]) -> Iterator[None]:
        """The write window on the keys' stripes (see :mod:`shmstore._layout`), with
        the statistics' seqlock held odd for as long."""
        hot, header = self._hot, self._header
        hot.stripes_enter(header, encoded)
        header[L.W_STATS_SEQ] += 1
        try:
            yield
        finally:
            header[L.W_STATS_SEQ] += 1
            hot.stripes_exit(header, encoded)

    def _remove(self, encoded: list[bytes]) -> int:
        """Delete the keys that are in the index, inside a write window open on their
        stripes; how many were."""
        freed_refs, freed_used = self._hot.index_delete(
            self.index.slots, self.arena.buffers, encoded
        )
        self.arena.release(freed_refs, freed_used)
        self._live -= len(freed_refs)
        self._live_bytes -= sum(freed_used)
        if self._sieve is not None:
            self._sieve.remove(encoded)
        self._publish_counts()
        return len(freed_refs)

    def _record_deadlines_again(self) -> None:
        """Replace the deadline records by one per live entry that has a deadline."""
        slots, buffers = self.index.slots, self.arena.buffers
        refs = slots[L.S_REF :: L.SLOT_WORDS].tolist()
        expires = slots[L.S_EXPIRES :: L.SLOT_WORDS].tolist()
        lengths = slots[L.S_HASH_KLEN :: L.SLOT_WORDS].tolist()
        entries = []
        for i, ref in enumerate(refs):
            if ref > L.DELETED and expires[i]:
                off = ref & L.OFFSET_MASK
                kb = bytes(buffers[ref >> L.OFFSET_BITS][off : off + (lengths[i] >> 32)])  # type: ignore[index]
                entries.append((expires[i], kb))
        self._deadlines.replace(entries)

    def _slots_of(self, encoded: list[bytes]) -> list[int]:
        return self._hot.find(self.index.slots, self.arena.buffers, encoded)  # type: ignore[no-any-return]

    def _expired(self, now: int, limit: int | None = None) -> tuple[list[bytes], int]:
        """The keys whose entry has expired by ``now`` (each once), and their bytes of
        keys and values; they are forgotten by the deadlines, so the caller must
        reclaim them."""
        deadline = self._deadlines.next
        if deadline is None or deadline > now:
            return [], 0
        candidates = list(dict.fromkeys(self._deadlines.due(now, limit)))
        slots = self.index.slots
        expired, used = [], 0
        for kb, i in zip(candidates, self._slots_of(candidates), strict=True):
            if i >= 0 and 0 < slots[i * L.SLOT_WORDS + L.S_EXPIRES] <= now:
                expired.append(kb)
                used += len(kb) + slots[i * L.SLOT_WORDS + L.S_VLEN]
        return expired, used

    def _growth(self, final: dict[bytes, int], expired: set[bytes]) -> tuple[int, list[bytes]]:
        """Exactly how many bytes of keys and values the batch (``final``: each key's
        last value length, in order of first appearance) would add once ``expired``
        is reclaimed, and its new keys, in order."""
        found = self._slots_of(list(final))
        slots = self.index.slots
        growth = 0
        new_keys = []
        for (kb, n), i in zip(final.items(), found, strict=True):
            if i >= 0 and kb not in expired:
                growth += n - slots[i * L.SLOT_WORDS + L.S_VLEN]
            else:
                growth += len(kb) + n
                new_keys.append(kb)
        return growth, new_keys
