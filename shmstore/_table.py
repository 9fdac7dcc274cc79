"""The manager's key-value state, in shared memory (layout: :mod:`shmstore._layout`):
the header, an :class:`~shmstore._index.Index` and an :class:`~shmstore._arena.Arena`,
changed one batch at a time by the hot functions (:mod:`shmstore._hot`).

Only the manager writes, one batch at a time under its table lock, so the methods here
need no lock of their own. Before a batch changes anything, the index is grown and
every arena byte the batch could need is reserved, so running out of ``/dev/shm``
raises :class:`StoreFullError` with nothing of the batch applied. Then the batch's
entries are written into blocks no slot points at, and only the slot changes happen
inside the write window, under the stripes of the batch's keys, so readers of other
keys never notice the batch at all.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence

from . import _hot
from . import _layout as L
from ._arena import Arena
from ._errors import StoreTooLargeError
from ._index import Index
from ._limits import Limits
from ._options import Options
from ._segment import Segment, unlink_segment

# typing is imported for the type checker only: the manager imports this module, and
# at run time typing would cost that process memory for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["ARENA_BYTES", "Table"]

#: Virtual size of an arena segment; pages are reserved as they are used.
ARENA_BYTES = 256 << 20


def _encode(keys: Sequence[str]) -> list[bytes]:
    """Each key's UTF-8, lone surrogates passed through (strict encoding first: it is
    twice as fast, and only a key with a lone surrogate needs the other)."""
    try:
        return list(map(str.encode, keys))
    except UnicodeEncodeError:
        return [key.encode("utf-8", "surrogatepass") for key in keys]


class Table:
    """A ``str -> bytes`` map with ``InMemoryByteStore``'s batch semantics, kept in the
    shared-memory segments named by ``prefix`` (created here, removed by :meth:`close`).

    :param arena_bytes: virtual size of each arena segment.
    :param limits: enforced by :meth:`set_many`, and published in the header for
        proxies to check before they send (default: :meth:`Limits.resolve`).
    :param options: the store's data-path options, published in the header for every
        proxy; ``options.implementation`` names the hot functions used here too
        (default: from this process's environment).
    """

    def __init__(
        self,
        prefix: str,
        arena_bytes: int = ARENA_BYTES,
        limits: Limits | None = None,
        options: Options | None = None,
    ) -> None:
        self._limits = limits or Limits.resolve()
        options = options or Options.from_environment()
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
            self.index = Index(prefix, header, hot)
        except BaseException:
            self._ctl.close()
            unlink_segment(self._ctl.name)
            raise
        self.arena = Arena(prefix, arena_bytes)
        self._live = self._live_bytes = self._next_order = 0

    # -- reads (the manager's own, for proxies that cannot read directly) --------------

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The value of each key in order, ``None`` for a miss; duplicates are kept."""
        index = self.index
        found = self._hot.lookup(
            self._header, index.slots, index.generation, self.arena.buffers,
            _encode(keys),
        )
        assert type(found) is list, "no write is under way while the table lock is held"
        return found

    def keys(self, prefix: str | None) -> list[str]:
        """The keys for which ``key.startswith(prefix)``, in insertion order; all if ``None``."""
        slots, buffers = self.index.slots, self.arena.buffers
        refs = slots[L.S_REF :: L.SLOT_WORDS].tolist()
        orders = slots[L.S_ORDER :: L.SLOT_WORDS].tolist()
        lengths = slots[L.S_HASH_KLEN :: L.SLOT_WORDS].tolist()
        found = []
        for i, ref in enumerate(refs):
            if ref > L.DELETED:
                off = ref & L.OFFSET_MASK
                buf = buffers[ref >> L.OFFSET_BITS]
                found.append((orders[i], buf[off : off + (lengths[i] >> 32)]))  # type: ignore[index]
        found.sort()
        keys = [kb.decode("utf-8", "surrogatepass") for _, kb in found]
        return [k for k in keys if k.startswith(prefix)] if prefix else keys

    # -- writes ---------------------------------------------------------------------

    def set_many(
        self,
        keys: Sequence[str],
        values: Sequence[Any],
        acknowledge: Callable[[], None] | None = None,
    ) -> None:
        """Store the pairs in order, so the last value of a repeated key wins.

        :param values: bytes-like objects, as many as ``keys``; they must stay as
            they are until ``acknowledge`` is called (or this returns). A list of
            ``bytes`` is taken as this process's own and copied after
            ``acknowledge``; anything else (views of a staging segment) before it.
        :param acknowledge: called once the batch can no longer fail, with the write
            window open on its keys' stripes, before the index changes (the manager
            replies there, so its client prepares the next request while this one is
            applied). A reader that starts after the call
            finds those stripes odd until the whole batch is in, so it never misses
            what was acknowledged. It must not raise.
        :raises LimitExceededError: a value, the batch or the store would be over its
            limit (the subclass names which); nothing was applied.
        :raises StoreFullError: ``/dev/shm`` cannot hold the batch; nothing was applied.
        """
        hot, arena, index = self._hot, self.arena, self.index
        encoded = _encode(keys)
        lengths = list(map(len, values))  # values are bytes or 1-D byte memoryviews
        self._limits.check_batch(keys, lengths)
        used = list(map(operator.add, map(len, encoded), lengths))
        added = sum(used)
        if self._live_bytes + added > self._limits.max_store_bytes:
            total = self._live_bytes + self._growth(encoded, lengths)
            if total > self._limits.max_store_bytes:
                raise StoreTooLargeError(
                    f"the store would hold {total} bytes of keys and values, over "
                    f"max_store_bytes={self._limits.max_store_bytes}"
                )
        sizes = arena.entry_sizes(used)
        index.make_room(self._live, len(encoded))
        arena.make_room(sum(sizes))
        refs = arena.allocate(sizes)
        # Entries go into blocks no slot points at (a reused block was freed by an
        # earlier batch, which moved its key's stripe on), so readers of other keys
        # never notice them. Values sent in the request are this process's own and are
        # written after the acknowledgment, so the client's wait does not include the
        # copy; staged ones are copied before it, since the client reuses its staging
        # segment as soon as it has the reply.
        owned = type(values) is list and set(map(type, values)) <= {bytes}
        if not owned:
            hot.place(arena.buffers, refs, encoded, values)
        hot.stripes_enter(self._header, encoded)
        try:
            if acknowledge is not None:
                acknowledge()
            if owned:
                hot.place(arena.buffers, refs, encoded, values)
            inserted, reused, freed_refs, freed_used = hot.index_set(
                index.slots, arena.buffers, encoded, refs, lengths, self._next_order
            )
            arena.release(freed_refs, freed_used)
            index.used += inserted - reused
            self._live += inserted
            self._live_bytes += added - sum(freed_used)
            self._next_order += len(refs)
            self._publish_counts()
        finally:
            hot.stripes_exit(self._header, encoded)

    def delete_many(self, keys: list[str]) -> None:
        """Remove the keys; missing ones are ignored."""
        encoded = _encode(keys)
        hot = self._hot
        hot.stripes_enter(self._header, encoded)
        try:
            freed_refs, freed_used = hot.index_delete(
                self.index.slots, self.arena.buffers, encoded
            )
            self.arena.release(freed_refs, freed_used)
            self._live -= len(freed_refs)
            self._live_bytes -= sum(freed_used)
            self._publish_counts()
        finally:
            hot.stripes_exit(self._header, encoded)

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

    def _growth(self, encoded: list[bytes], lengths: list[int]) -> int:
        """Exactly how many bytes of keys and values the batch would add (overwrites
        replace, and the last value of a repeated key wins)."""
        final = dict(zip(encoded, lengths, strict=True))
        found = self._hot.find(self.index.slots, self.arena.buffers, list(final))
        slots = self.index.slots
        growth = 0
        for (kb, n), i in zip(final.items(), found, strict=True):
            growth += n - slots[i * L.SLOT_WORDS + L.S_VLEN] if i >= 0 else len(kb) + n
        return growth
