"""Staging segments: how a proxy hands large values to the manager without the socket.

A proxy copies the values of a large ``mset`` into a shared-memory segment of its own,
named ``s<pid>.<n>`` under the store's prefix, and sends only the segment's name and the
values' lengths (``MSET_SHM``); the manager copies each value once, into the arena.

Creating a segment costs more than copying into one: the kernel allocates and maps its
pages, about 0.6 ms per MiB on the virtual machines this was measured on, as much again
as the copy. So each proxy keeps one segment of up to ``KEEP_BYTES`` and reuses it for
the next batch that fits, and the manager keeps it mapped for the connection, so
neither side touches fresh pages twice. A larger batch gets a segment of its own,
removed after its request.

A kept segment is reused only when nothing can still be reading it:

* one batch at a time: a second thread of the proxy that finds it in use stages into a
  segment of its own;
* only after the manager's reply: if the request failed in any way (an interrupt, a
  broken connection), the manager may still be copying from it, so it is removed and
  the next batch gets a new one;
* only on the connection it was used on: when the connection is replaced, the manager
  may have removed the segments of this process (it does so when a process's last
  connection ends), so a new one is made;
* only in the process that made it: a forked child makes its own.

Cleanup: the proxy removes its segments on :meth:`Stager.close`; the manager removes a
process's segments when its last connection ends, so a killed proxy leaves none.
"""

from __future__ import annotations

import itertools
import os
import threading

from ._segment import Segment, unlink_segment

__all__ = ["KEEP_BYTES", "Staged", "Stager"]

#: Largest staging segment a proxy keeps for reuse (and the manager keeps mapped).
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
        self._lock = threading.Lock()  # held from stage() to done() for the kept segment
        self._kept: Segment | None = None
        self._kept_suffix = ""
        self._kept_pid = 0
        self._kept_generation = -1
        self._closed = False

    def stage(self, values: list[bytes], total: int, generation: int) -> Staged:
        """Copy ``values`` (``total`` bytes) into a staging segment. Every call must be
        followed by :meth:`done`.

        :param generation: the connection the request will go on
            (:attr:`Client.generation`, read after connecting).
        :raises StoreFullError: ``/dev/shm`` has no room (nothing is left behind).
        """
        if total <= KEEP_BYTES and self._lock.acquire(blocking=False):
            try:
                segment, suffix = self._kept_for(total, generation)
                _copy(segment, values)
                return Staged(segment, suffix, kept=True)
            except BaseException:
                self._drop_kept()
                self._lock.release()
                raise
        suffix = f"s{os.getpid()}.{next(_numbers)}"
        segment = _create(self._prefix + suffix, max(total, 1))
        try:
            _copy(segment, values)
        except BaseException:
            _remove(segment)
            raise
        return Staged(segment, suffix, kept=False)

    def done(self, staged: Staged, replied: bool) -> None:
        """The request that named ``staged`` is over; ``replied``: the manager answered
        it, so it no longer reads the segment."""
        if not staged.kept:
            _remove(staged.segment)
            return
        if not replied or self._closed:
            self._drop_kept()
        self._lock.release()

    def release(self) -> None:
        """Remove the kept segment, unless a batch is in it right now; the next large
        batch makes a new one."""
        if self._lock.acquire(blocking=False):
            try:
                self._drop_kept()
            finally:
                self._lock.release()

    def close(self) -> None:
        """Remove the kept segment now, or, if a batch is in it right now, when that
        batch's request is done; none is kept afterwards."""
        self._closed = True
        self.release()

    def _kept_for(self, total: int, generation: int) -> tuple[Segment, str]:
        segment, pid = self._kept, os.getpid()
        if segment is not None and (
            self._kept_pid != pid or segment.size < total or self._kept_generation != generation
        ):
            self._drop_kept()
            segment = None
        if segment is None:
            size = max(_MIN_KEPT_BYTES, 1 << max(0, (total - 1).bit_length()))
            suffix = f"s{pid}.{next(_numbers)}"
            segment = _create(self._prefix + suffix, size)
            self._kept, self._kept_suffix, self._kept_pid = segment, suffix, pid
        self._kept_generation = generation
        return segment, self._kept_suffix

    def _drop_kept(self) -> None:
        segment, self._kept = self._kept, None
        if segment is None:
            return
        if self._kept_pid == os.getpid():
            _remove(segment)
        else:
            segment.close()  # the parent's: unmap our copy, leave the name to the parent


def _create(name: str, size: int) -> Segment:
    segment = Segment.create(name, size)
    try:
        segment.reserve(0, size)
    except BaseException:
        _remove(segment)
        raise
    segment.seal()  # one descriptor (the mapping's) per kept segment, not two
    return segment


def _copy(segment: Segment, values: list[bytes]) -> None:
    buf, offset = segment.buf, 0
    for value in values:
        end = offset + len(value)
        buf[offset:end] = value
        offset = end


def _remove(segment: Segment) -> None:
    segment.close()
    unlink_segment(segment.name)
