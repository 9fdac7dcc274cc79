"""POSIX shared-memory segments: named with ``posix_ipc``, mapped with ``mmap``.

A segment is created owner-only (mode 0600) and exclusively (``O_CREX``), sized with
``ftruncate`` but not yet backed: tmpfs allocates a page on first write, and a write
to a page it cannot allocate kills the writer with SIGBUS. The writer therefore calls
:meth:`Segment.reserve` (``posix_fallocate``) before writing into a range, which fails
cleanly with ENOSPC instead, and readers only read ranges the index points at.
Segments are deliberately not registered with ``multiprocessing.resource_tracker``,
which would unlink them when the first process that used them exits (CPython #82300).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os

import posix_ipc

from ._errors import StoreError, StoreFullError

# typing is imported for the type checker only: the manager imports this module, and
# at run time typing would cost that process memory for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Segment", "unlink_segment"]

# Linux 5.14+: map a range's pages in one call instead of one fault per page on first
# touch (several microseconds each on virtual machines). Python 3.11 lacks the name.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


@functools.cache
def _madvise() -> Any:
    """libc's madvise, through ctypes, which releases the GIL around the call where
    mmap.madvise holds it: a thread reserving pages then holds up no other thread.
    Loaded on first use: only writers reserve, and a proxy that never stages a batch
    never needs it."""
    import ctypes

    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def _address_of(buf: mmap.mmap) -> int:
    """Where ``buf`` is mapped, for madvise; taken from a ctypes view that is dropped
    at once, so the mmap has no buffer export left to block its close()."""
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


class Segment:
    """One mapped segment. ``buf`` is the ``mmap``; ``size`` its length in bytes."""

    def __init__(self, name: str, buf: mmap.mmap, fd: int | None) -> None:
        self.name = name
        self.buf = buf
        self.size = len(buf)
        self._fd = fd  # kept by the writer only, for reserve()
        self._address = 0  # where buf is mapped, once reserve() has needed it

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create and map a new segment of ``size`` bytes (none reserved yet).

        :raises StoreError: a segment of that name exists.
        """
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError as exc:
            raise StoreError(f"shared-memory segment {name!r} already exists") from exc
        try:
            buf = mmap.mmap(shm.fd, size)
        except BaseException:
            shm.close_fd()
            posix_ipc.unlink_shared_memory(name)
            raise
        return cls(name, buf, shm.fd)

    @classmethod
    def open(cls, name: str, writable: bool = False) -> Segment:
        """Map an existing segment, read-only unless ``writable`` (proxies map only
        the visited bytes and the reader table so; see :mod:`shmstore._layout`).

        :raises FileNotFoundError: no segment has that name (any more).
        """
        try:
            shm = posix_ipc.SharedMemory(name, 0, read_only=not writable)
        except posix_ipc.ExistentialError as exc:
            raise FileNotFoundError(errno.ENOENT, "no shared-memory segment", name) from exc
        try:
            prot = mmap.PROT_READ | mmap.PROT_WRITE if writable else mmap.PROT_READ
            buf = mmap.mmap(shm.fd, shm.size, prot=prot)
        finally:
            shm.close_fd()
        return cls(name, buf, None)

    def reserve(self, start: int, length: int, populate: bool = True) -> None:
        """Allocate the pages of ``[start, start + length)``, so writing there cannot
        fault, and, if ``populate``, map them, so writing there through :attr:`buf`
        takes no page faults. Both are system calls made without the GIL. Must not
        race :meth:`close`.

        Without ``populate`` the pages are allocated but not cleared: tmpfs clears a
        page when it is first mapped, and not when :meth:`write` fills it.

        :raises StoreFullError: ``/dev/shm`` has no room.
        """
        assert self._fd is not None, "only the writer reserves"
        try:
            os.posix_fallocate(self._fd, start, length)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise StoreFullError(
                    f"shared memory is full: no room for {length} more bytes in /dev/shm"
                ) from exc
            raise
        if not self._address:
            self._address = _address_of(self.buf)
        if populate:
            # On a kernel without MADV_POPULATE_WRITE this fails, and the pages are
            # mapped by faults on first touch instead.
            _madvise()(self._address + start, length, _MADV_POPULATE_WRITE)

    def write(self, offset: int, parts: list[Any]) -> None:
        """Write the bytes-like ``parts`` end to end at ``offset`` with ``pwritev``,
        not through the mapping: the kernel copies them into the segment's pages
        without the GIL, and a page it allocated with :meth:`reserve` but never mapped
        is filled without being cleared first. Only into a reserved range.

        :raises StoreFullError: ``/dev/shm`` has no room (not in a reserved range).
        """
        assert self._fd is not None, "only the writer writes"
        views = [memoryview(part).cast("B") for part in parts]
        made = list(views)  # every view made here, released at the end
        try:
            while views:
                try:
                    done = os.pwritev(self._fd, views, offset)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise StoreFullError("shared memory is full") from exc
                    raise
                if not done and any(view.nbytes for view in views):
                    raise OSError(errno.EIO, "pwritev wrote nothing", self.name)
                offset += done
                rest = []  # after a short write, what is left of each part
                for view in views:
                    if done >= view.nbytes:
                        done -= view.nbytes
                        continue
                    if done:
                        view = view[done:]
                        made.append(view)
                        done = 0
                    rest.append(view)
                views = rest
        finally:
            for view in made:
                view.release()

    def seal(self) -> None:
        """Close the writer's descriptor once everything is reserved (the mapping
        keeps its own); :meth:`reserve` cannot be called afterwards."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Unmap (and, for the writer, close the descriptor); the name stays."""
        with contextlib.suppress(BufferError):  # a memoryview still exported: GC unmaps
            self.buf.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def unlink_segment(name: str) -> None:
    """Remove a segment's name; processes that mapped it keep their mapping."""
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(name)
