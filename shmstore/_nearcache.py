"""A near cache: a local, SIEVE-bounded :class:`~shmstore.SharedByteStore` shared by
every process of a host, holding copies of a Redis store's values in front of it.

The Redis stores (:mod:`shmstore._redis`) use it as follows; this module gives them the
three operations beyond a store's that it takes:

* ``mget``: every key read from local shared memory (no request at all); if any is
  missing, :meth:`NearCache.invalidation_seq` is read, then the *whole* batch from
  Redis (one moment of the origin, so a batch is never stitched together from local
  and remote values), and the values found are handed to :meth:`NearCache.fill`.
* ``mset``: :meth:`NearCache.invalidate` the batch's keys here, write to Redis, and
  invalidate them here again. The first keeps every process of this host from reading
  half of the batch from the near cache and half from Redis while it is written; the
  second removes what a reader of this host may have filled from the server before
  the write was done, so the writer reads its own write. The written values are not
  put in the near cache: the server reports this write too, as it does another
  host's (broadcast invalidations do not say who wrote), and a copy kept in spite of
  that report could be one another host overwrote in the same instant. The next read
  of the keys on each host fills them again.
* ``mdelete``: delete in Redis, then :meth:`NearCache.invalidate` here.

The near cache's manager holds the tracking connection (:mod:`shmstore._tracking`):
every write of the store's keys on the server, by any host, reaches it as an
invalidation, which removes the keys here; a flush, or the loss of that connection,
empties the near cache. A fill is stored only if no invalidation of its keys was
applied after the proxy read the sequence (:mod:`shmstore._invalidation`), so a value
older than one whose invalidation has arrived is never kept.

Consistency, then: on one host, a process reads its own writes, and every process of
the host sees a write once its ``mset`` has returned. Another host's write is seen
here once its invalidation has arrived (a server push after the write, typically well
under a millisecond on one network; the README gives the measured figure); until
then this host may read the value it replaced, key by key, and a batch read wholly
from the near cache may mix keys from before and after that write. If the tracking
connection breaks silently, a PING left unanswered for ``timeout_s`` seconds (sent
after at most :data:`~shmstore._tracking.PING_S` seconds idle) drops the near cache:
that is the bound on how long a stale value can be read.
"""

from __future__ import annotations

from typing import Any

from . import _layout as L
from . import _protocol as proto
from ._errors import LimitExceededError, StoreNotFoundError
from ._segment import Segment
from ._store import SharedByteStore

__all__ = ["NearCache"]


class NearCache(SharedByteStore):
    """The local store of a Redis store's near cache (made by
    :class:`~shmstore.RedisByteStore` with ``near_cache_bytes``; not used on its own).

    :param origin: ``{"url", "prefix", "timeout_s"}`` of the Redis store it caches:
        the server's URL (password included: it reaches the manager through its stdin
        only), the store's value key prefix, and the seconds after which a silent
        tracking connection counts as lost.
    :param max_bytes: the bound on its keys and values, in bytes (SIEVE eviction).
    :param runtime_dir: as for :class:`~shmstore.SharedByteStore`.
    :raises StoreError: its manager could not be started.
    """

    def __init__(
        self, origin: dict[str, Any], max_bytes: int, *, runtime_dir: str | None = None
    ) -> None:
        self._origin = origin
        super().__init__(
            max_store_bytes=max_bytes, eviction_policy="sieve", runtime_dir=runtime_dir
        )

    def _tracking(self) -> dict[str, Any] | None:
        return self._origin

    def _init_proxy(self, *args: Any, **kwargs: Any) -> None:
        super()._init_proxy(*args, **kwargs)
        self._seq_segment: Segment | None = None
        self._seq_words: memoryview | None = None

    def close(self) -> None:
        words, self._seq_words = self._seq_words, None
        if words is not None:
            words.release()
        segment, self._seq_segment = self._seq_segment, None
        if segment is not None:
            segment.close()
        super().close()

    def get(self, keys: list[str]) -> list[bytes | None]:
        """:meth:`mget` of keys already checked to be ``str``."""
        self._check_open()
        values = self._read_direct(keys)
        if values is None:
            values = self._client.request(self._frame(proto.MGET, keys))
        return values

    def invalidation_seq(self) -> int:
        """The number of the last invalidation applied, read from shared memory; read it
        before reading the origin, and give it to :meth:`fill`.

        :raises StoreNotFoundError: the near cache has stopped.
        """
        words = self._seq_words
        if words is None:
            self._check_open()
            try:
                segment = Segment.open(L.ctl_name(self._paths.segment_prefix))
            except FileNotFoundError:
                raise StoreNotFoundError(f"near cache {self.name!r} has stopped") from None
            self._seq_segment = segment
            words = self._seq_words = memoryview(segment.buf).cast("Q")
        return int(words[L.W_INVALIDATION_SEQ])

    def invalidate(self, keys: list[str]) -> int:
        """Remove ``keys`` here, recording their invalidation.

        :returns: the invalidation's number, for the :meth:`fill` of a write of them.
        :raises StoreConnectionError: the near cache's manager cannot be reached.
        """
        self._check_open()
        result: int = self._client.request(self._frame(proto.INVALIDATE, keys))
        return result

    def fill(self, keys: list[str], values: list[bytes], ttl_ns: int, seen: int) -> None:
        """Store the pairs, each unless its key was invalidated after number ``seen``
        (then it is removed here). Best effort: a fill over the store's limits is
        dropped, and the next read asks the origin again.

        :param ttl_ns: how long the copies live, in ns (0: until invalidated).
        :raises StoreConnectionError: the near cache's manager cannot be reached.
        """
        if not keys:
            return
        self._check_open()
        try:
            frame = self._frame(proto.FILL, keys, values, ttl_ns, seen)
        except LimitExceededError:
            return
        self._client.request(frame)
