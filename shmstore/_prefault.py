"""Prefaulting: a writing proxy clears the arena's next fresh pages while it waits.

Reserving a fresh page of ``/dev/shm`` costs the kernel 1.3-1.5 µs on the virtual
machines this was measured on, nearly all of it clearing the page, and the manager,
whose main thread bounds a writer of new keys, pays it for each (see
:meth:`Arena.reserve_ahead <shmstore._arena.Arena.reserve_ahead>`). A page that
another process has already touched costs it 0.3-0.4 µs instead. So a proxy waiting
for the reply to a staged ``mset`` spends the wait touching the pages a little past
where the manager has reserved to (header word ``RESERVED``, see
:mod:`shmstore._layout`), in its own read-only mapping of the segment
(``MADV_POPULATE_READ``: tmpfs allocates and clears a page on a read fault too), a
few at a time, looking for the reply between steps. Batched ``mset`` of 1.5 kB values
into a fresh store, six pairs in turns: 471-499k keys/s against 421-489k without it.
Prefaulting from the reservation itself gained nothing (the writer and the manager
then cleared the same pages at once), nor did unmapping each step's pages after it
(``MADV_DONTNEED``), which cost what the prefaulting saved.

It is a hint, and only that: the manager still reserves every page it writes into
(``fallocate``), so a page prefaulted or not is the same to it, and a proxy that
never prefaults changes nothing but speed. The pages touched stay the store's (they
are in its segment) and are at most :data:`LEAD` + :data:`SPAN` past the manager's
reservation. On a full ``/dev/shm`` the kernel refuses the populate with an error,
not a signal; any error stops the prefaulting for good.
"""

from __future__ import annotations

import mmap
import os

from . import _layout as L
from ._segment import Segment

__all__ = ["Prefaulter"]

#: Bytes past the manager's reservation that a proxy leaves to the manager: its own
#: reserving clears those next, and two processes clearing the same pages gain
#: nothing.
LEAD = 128 << 10
#: Bytes past that which a proxy prefaults at most.
SPAN = 512 << 10
#: Bytes one step prefaults: 4 pages, some 6 µs, so a reply waits at most that long.
STEP = 16 << 10

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14+


class Prefaulter:
    """One proxy's prefaulting of the arena of the store whose segments are named
    under ``prefix``. Used by one thread at a time (the one holding the proxy's
    connection); a forked child makes its own mappings.

    :param prefix: the store's segment prefix.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._pid = os.getpid()
        self._ctl: Segment | None = None
        self._header: memoryview | None = None
        self._segment: Segment | None = None
        self._segment_id = 0
        self._done_to = 0  # in the mapped segment: prefaulted up to here
        self._failed = False

    def step(self) -> bool:
        """Prefault up to :data:`STEP` more bytes ahead of the manager's reservation;
        whether there was anything to do (False once anything failed)."""
        if self._failed:
            return False
        try:
            return self._step()
        except (OSError, ValueError):  # a segment gone, a kernel without the advice
            self.close()
            return False

    def close(self) -> None:
        """Unmap what this process mapped and stop: :meth:`step` does nothing after."""
        self._failed = True
        if self._header is not None:
            self._header.release()
        for segment in (self._ctl, self._segment):
            if segment is not None:
                segment.close()
        self._forget()

    def _forget(self) -> None:
        """Drop the mappings (unmapped already, or a forked parent's copies)."""
        self._header = None
        self._ctl = self._segment = None
        self._segment_id = 0

    def _step(self) -> bool:
        if self._pid != os.getpid():  # a forked child: the parent's mappings are not ours
            self._pid = os.getpid()
            self._forget()
        header = self._header
        if header is None:
            self._ctl = Segment.open(L.ctl_name(self._prefix))
            header = self._header = memoryview(self._ctl.buf).cast("Q")
        reserved = header[L.W_RESERVED]
        segment_id, offset = reserved >> L.OFFSET_BITS, reserved & L.OFFSET_MASK
        if segment_id == 0:
            return False
        segment = self._segment
        if segment_id != self._segment_id or segment is None:
            if segment is not None:
                segment.close()
                self._segment = None
            segment = self._segment = Segment.open(L.arena_name(self._prefix, segment_id))
            self._segment_id, self._done_to = segment_id, 0
        start = max(offset + LEAD, self._done_to) & ~(mmap.PAGESIZE - 1)
        end = min(offset + LEAD + SPAN, segment.size, start + STEP)
        if end <= start:
            return False
        segment.buf.madvise(_MADV_POPULATE_READ, start, end - start)
        self._done_to = end
        return True
