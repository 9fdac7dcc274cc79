"""Staging segments: how a proxy hands large values to the manager without the socket.

A proxy copies the values of a large ``mset`` into a shared-memory segment of its own,
named ``s<pid>.<n>`` under the store's prefix, and sends only the segment's name and the
values' lengths (``MSET_SHM``); the manager copies each value once, into the arena.

Creating a segment costs more than copying into one: the kernel allocates and maps its
pages, about 0.6 ms per MiB on the virtual machines this was measured on, as much again
as the copy. So each proxy keeps two segments of up to ``KEEP_BYTES`` and uses them in
turn for the batches that fit, and the manager keeps them mapped for the connection,
so neither side touches fresh pages twice. A larger batch gets a segment of its own,
removed after its request.

Two, in turn, so that the manager may acknowledge a staged batch before it has copied
the values out, as it does a batch sent on the socket: it serves a connection's
requests one after the other, each to its end, so once the reply to a later request
on the same connection is in, it has finished copying from the segment of the one
before; that is the segment the next batch takes. A kept segment is reused only when
nothing can still be reading it:

* one batch at a time: a second thread of the proxy that finds the kept segments in
  use stages into a segment of its own;
* only after the reply to a later request: the segment not used by the last staged
  batch is the one taken, and that batch's reply is in;
* only while every request since has had its reply: if one failed in any way (an
  interrupt, a broken connection), the manager may still be copying from either, so
  both are removed and the next batches get new ones;
* only on the connection they were used on: when the connection is replaced, the
  manager may have removed the segments of this process (it does so when a process's
  last connection ends), and the old connection's requests may still be running, so
  new ones are made;
* only in the process that made them: a forked child makes its own.

Cleanup: the proxy removes its segments on :meth:`Stager.close`; the manager removes a
process's segments when its last connection ends, so a killed proxy leaves none.
A segment of its own that a batch got is removed when its request is over; the
manager, which may still be copying from it then, has its own mapping.
"""

from __future__ import annotations

import itertools
import os
import threading

from ._hot import fallback
from ._segment import Segment, unlink_segment

TYPE_CHECKING = False  # typing for the type checker only
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["KEEP_BYTES", "Staged", "Stager"]

#: Largest staging segment a proxy keeps for reuse (it keeps two; the manager keeps
#: them mapped).
KEEP_BYTES = 16 << 20
#: Smallest kept segment; kept segments grow by doubling.
_MIN_KEPT_BYTES = 1 << 20

_numbers = itertools.count()


class Staged:
    """Values staged for one request: ``suffix`` names the segment in the request."""

    __slots__ = ("kept", "segment", "suffix")

    def __init__(self, segment: Segment, suffix: str, kept: bool) -> None:
        self.segment, self.suffix, self.kept = segment, suffix, kept


class Stager:
    """One proxy's staging segments, under the store's segment ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._lock = threading.Lock()  # held from stage() to done() for a kept segment
        self._kept: list[tuple[Segment, str] | None] = [None, None]
        self._turn = 0  # the kept segment the next batch takes
        self._kept_pid = 0
        self._kept_generation = -1
        self._closed = False

    def stage(
        self,
        values: list[bytes],
        total: int,
        generation: int,
        copy: Callable[[Any, list[bytes]], int] = fallback.stage_values,
    ) -> Staged:
        """Copy ``values`` (``total`` bytes) into a staging segment. Every call must be
        followed by :meth:`done`.

        :param generation: the connection the request will go on
            (:attr:`Client.generation`, read after connecting).
        :param copy: the store's ``stage_values`` (:mod:`shmstore._hot`), which lays
            them end to end.
        :raises StoreFullError: ``/dev/shm`` has no room (nothing is left behind).
        """
        if total <= KEEP_BYTES and self._lock.acquire(blocking=False):
            try:
                segment, suffix = self._kept_for(total, generation)
                copy(segment.buf, values)
                return Staged(segment, suffix, kept=True)
            except BaseException:
                self._drop_kept()
                self._lock.release()
                raise
        suffix = f"s{os.getpid()}.{next(_numbers)}"
        segment = _create(self._prefix + suffix, max(total, 1))
        try:
            copy(segment.buf, values)
        except BaseException:
            _remove(segment)
            raise
        return Staged(segment, suffix, kept=False)

    def done(self, staged: Staged, replied: bool) -> None:
        """The request that named ``staged`` is over; ``replied``: the manager answered
        it, so it has finished with every request before it on the connection (it may
        still be copying from ``staged`` itself)."""
        if not staged.kept:
            _remove(staged.segment)
            return
        if not replied or self._closed:
            self._drop_kept()
        else:
            self._turn ^= 1  # the other one: the reply just in says it is free
        self._lock.release()

    def release(self) -> None:
        """Remove the kept segments, unless a batch is in one right now; the next
        large batches make new ones."""
        if self._lock.acquire(blocking=False):
            try:
                self._drop_kept()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Remove the kept segments now, or, if a batch is in one right now, when that
        batch's request is done; none is kept afterwards."""
        self._closed = True
        self.release()

    def _kept_for(self, total: int, generation: int) -> tuple[Segment, str]:
        pid = os.getpid()
        if self._kept_pid != pid or self._kept_generation != generation:
            self._drop_kept()
            self._kept_pid, self._kept_generation = pid, generation
        kept = self._kept[self._turn]
        if kept is not None and kept[0].size < total:
            _remove(kept[0])
            kept = None
        if kept is None:
            size = max(_MIN_KEPT_BYTES, 1 << max(0, (total - 1).bit_length()))
            suffix = f"s{pid}.{next(_numbers)}"
            kept = self._kept[self._turn] = (_create(self._prefix + suffix, size), suffix)
        return kept

    def _drop_kept(self) -> None:
        kept, self._kept, self._turn = self._kept, [None, None], 0
        for item in kept:
            if item is None:
                continue
            if self._kept_pid == os.getpid():
                _remove(item[0])
            else:
                item[0].close()  # the parent's: unmap our copy, leave the name to the parent


def _create(name: str, size: int) -> Segment:
    segment = Segment.create(name, size)
    try:
        segment.reserve(0, size)
    except BaseException:
        _remove(segment)
        raise
    segment.seal()  # one descriptor (the mapping's) per kept segment, not two
    return segment


def _remove(segment: Segment) -> None:
    segment.close()
    unlink_segment(segment.name)
