"""Direct reads: a proxy looks keys up in the store's shared memory itself, without a
request to the manager (layout and the consistency argument: :mod:`shmstore._layout`).

A read is optimistic: the hot function ``lookup`` reads the batch and checks the
stripe versions of its keys and the index generation around it. A write to other keys
never disturbs it. One that overlaps it on its keys' stripes makes it read again, in
place: a few times at once, then yielding the CPU between tries (on a machine with
fewer cores than processes the writer may need the core), for up to
:data:`GIVE_UP_S`; only a manager stalled that long, or killed mid-batch, sends the
read to the manager instead.

A proxy's reader is shared by its threads. What a lookup uses, the ``ctl``, index
and visited-byte mappings and their generation, is published as one tuple and
replaced whole when the index grows; arena mappings are only ever added. Nothing is
unmapped explicitly: a mapping goes when the last reference to it does, so a thread
still inside a lookup keeps what it is reading, and no thread ever finds a mapping
released under it.

Direct reads are on where the layout's memory-ordering argument holds, x86-64, unless
the store's owner turned them off (:mod:`shmstore._options`).
"""

from __future__ import annotations

import os
import threading
import time

from . import _hot
from . import _layout as L
from ._limits import Limits
from ._options import Options
from ._policy import Policy
from ._segment import Segment

__all__ = ["GIVE_UP_S", "DirectReader", "read_header"]

#: Seconds a read keeps trying while writes overlap it before it asks the manager.
GIVE_UP_S = 0.05
#: Tries made at once before each further one yields the CPU.
_SPINS = 4


class _Pidfd:
    """A pidfd, closed when the last reference to it goes (a thread inside a read
    holds one), never while a thread may still poll it."""

    __slots__ = ("fd",)

    def __init__(self, pid: int) -> None:
        self.fd = -1  # so that __del__ of one whose pidfd_open failed closes nothing
        self.fd = os.pidfd_open(pid)

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


class DirectReader:
    """Read-only mappings of one store's segments, lookups in them, and a pidfd of the
    manager that wrote them, to tell without a request or a lock whether it still runs.

    Counters, per reader (this proxy in this process): :attr:`reads` batches read
    directly, :attr:`retried` of them read again because a write overlapped,
    :attr:`fell_back` given up to the manager.

    :param implementation: the hot functions to read with (default: the store's).
    :raises FileNotFoundError: the store's segments do not exist (any more).
    :raises ProcessLookupError: its manager has exited.
    :raises ValueError: they are of another layout version.
    :raises OSError: no pidfds here (Linux before 5.3): the manager must answer reads.
    """

    def __init__(self, prefix: str, implementation: str | None = None) -> None:
        self._prefix = prefix
        ctl = memoryview(Segment.open(L.ctl_name(prefix)).buf).cast("Q")
        if (
            len(ctl) * 8 != L.CTL_BYTES
            or ctl[L.W_MAGIC] != L.MAGIC
            or ctl[L.W_VERSION] != L.VERSION
        ):
            raise ValueError(f"segment {L.ctl_name(prefix)!r} is not a version {L.VERSION} store")
        self.options = Options.read(ctl)
        self.limits = _limits_in(ctl)
        self.policy = Policy.read(ctl)
        self._hot = _hot.load(implementation or self.options.implementation)
        self._pidfd: _Pidfd | None = _Pidfd(ctl[L.W_MANAGER_PID])
        self._lock = threading.Lock()  # for mapping, the slow path only
        self._arenas: list[object] = [None]
        self._state: tuple[memoryview, memoryview, int, memoryview | None] | None = (
            ctl,
            L.no_index(),
            0,  # no index is generation 0: the first read maps the current one
            None,
        )
        self.reads = self.retried = self.fell_back = 0

    def get_many(self, keys: list[str] | list[bytes]) -> list[bytes | None] | None:
        """The values of the keys (``str``, or their UTF-8 with surrogatepass), as of
        one moment; ``None`` if the manager must answer: it has exited (its memory is
        never served then), this reader is closed, or no consistent read was had in
        :data:`GIVE_UP_S`."""
        state, pidfd, hot = self._state, self._pidfd, self._hot
        if state is None or pidfd is None or not hot.manager_alive(pidfd.fd, state[0]):
            return None
        self.reads += 1
        found = hot.lookup(
            state[0], state[1], state[2], self._arenas, keys, state[3], time.monotonic_ns()
        )
        if type(found) is list:
            return found
        return self._read_again(keys, found)

    @property
    def manager_alive(self) -> bool:
        """Whether the manager that wrote these segments still runs."""
        pidfd, state = self._pidfd, self._state
        if pidfd is None or state is None:
            return False
        return bool(self._hot.manager_alive(pidfd.fd, state[0]))

    def _read_again(
        self, keys: list[str] | list[bytes], found: object
    ) -> list[bytes | None] | None:
        hot = self._hot
        torn = 0
        deadline = 0.0
        while True:
            if found == hot.TORN:
                torn += 1
                if torn == 1:
                    self.retried += 1
                    deadline = time.monotonic() + GIVE_UP_S
                elif torn > _SPINS:
                    if time.monotonic() > deadline:
                        self.fell_back += 1
                        return None
                    os.sched_yield()
            else:
                try:
                    self._map(found)  # type: ignore[arg-type]
                except (OSError, ValueError):
                    found = hot.TORN  # gone or not yet whole: read the header again
                    continue
            state = self._state
            if state is None:
                return None
            found = hot.lookup(
                state[0], state[1], state[2], self._arenas, keys, state[3], time.monotonic_ns()
            )
            if type(found) is list:
                return found

    def _map(self, what: int) -> None:
        """Map the current index (``what`` is ``STALE``) or arena segment ``what``."""
        with self._lock:
            state = self._state
            if state is None:
                return
            ctl = state[0]
            if what == self._hot.STALE:
                generation = ctl[L.W_INDEX_GEN]
                if generation == state[2]:
                    return  # another thread did
                slots = memoryview(Segment.open(L.index_name(self._prefix, generation)).buf)
                capacity = len(slots) // (8 * L.SLOT_WORDS)
                if capacity < 1 or capacity & (capacity - 1) or len(slots) % (8 * L.SLOT_WORDS):
                    raise ValueError("not a whole index")
                visited = None
                if self.policy.sieve:
                    visited = memoryview(
                        Segment.open(L.visited_name(self._prefix, generation), writable=True).buf
                    )
                self._state = (ctl, slots.cast("Q"), generation, visited)
                return
            arenas = self._arenas
            if what < len(arenas) and arenas[what] is not None:
                return
            buf = Segment.open(L.arena_name(self._prefix, what)).buf
            if what >= len(arenas):
                arenas.extend([None] * (what + 1 - len(arenas)))
            arenas[what] = buf

    def close(self) -> None:
        """Drop this reader's mappings and pidfd; each goes once no thread is using it."""
        self._state = None
        self._pidfd = None
        self._arenas = [None]


def read_header(prefix: str) -> tuple[Limits, Options]:
    """The limits and options a store's manager published in its header.

    :raises FileNotFoundError: the store's segments do not exist (any more).
    """
    segment = Segment.open(L.ctl_name(prefix))
    header = memoryview(segment.buf).cast("Q")
    try:
        return _limits_in(header), Options.read(header)
    finally:
        header.release()
        segment.close()


def _limits_in(header: memoryview) -> Limits:
    return Limits(
        header[L.W_MAX_VALUE_BYTES], header[L.W_MAX_BATCH_BYTES], header[L.W_MAX_STORE_BYTES]
    )
