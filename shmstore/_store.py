"""The proxies: :class:`SharedByteStore` and :class:`SharedStore`.

A proxy is what every process holds. Constructing one starts a manager and makes this
process its owner; :meth:`~_SharedStoreBase.attach` and unpickling give proxies to the same
store in other processes. Every public method checks its whole batch first, then makes
at most one request (an ``mget`` usually none: it reads shared memory itself), so a bad
item never leaves half a batch applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from . import _hot
from . import _layout as L
from . import _protocol as proto
from ._administration import Administration
from ._batch import MsetBatch, check_prefix, split_pairs
from ._batch import key_list as _checked_keys
from ._client import Client
from ._codec import decode_msgpack, encode_bytes, encode_msgpack
from ._errors import (
    LimitExceededError,
    StoreClosedError,
    StoreConnectionError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
)
from ._launcher import ManagerProcess
from ._limits import Limits
from ._options import Options
from ._policy import Policy, ttl_ns
from ._prefault import Prefaulter
from ._reader import DirectReader, read_header
from ._runtime import StorePaths, claim, default_runtime_dir, new_name
from ._segment import Segment
from ._staging import Staged, Stager
from ._stats import ReaderCounters

try:
    from langchain_core.stores import BaseStore
except ImportError:  # shmstore works without LangChain; isinstance checks need it
    from ._basestore import BaseStore  # type: ignore[assignment]

__all__ = ["SharedByteStore", "SharedStore"]

V = TypeVar("V")
_Self = TypeVar("_Self", bound="_SharedStoreBase[Any]")

#: Counts the forks this process descends from: a proxy's reader-table slot belongs to
#: the process that asked for it, and a forked child asks for its own.
_forks = [0]
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))

#: ``mset``'s ``ttl_s`` when not given: the store's default applies.
_STORE_TTL: Any = object()


def _ttl_arg(ttl_s: Any) -> int | None:
    """``mset``'s ``ttl_s`` as the request carries it: ``None`` for the store's default,
    else nanoseconds (0: never expires)."""
    return None if ttl_s is _STORE_TTL else ttl_ns(ttl_s)


def _snapshot_config(path: Any, every_s: Any) -> dict[str, Any] | None:
    """The manager's snapshot configuration for the store's options."""
    if every_s is not None and (
        not isinstance(every_s, (int, float)) or isinstance(every_s, bool) or not every_s > 0
    ):
        raise ValueError(f"snapshot_every_s must be None or a positive number, got {every_s!r}")
    if path is None:
        if every_s is not None:
            raise ValueError("snapshot_every_s needs a snapshot file: give snapshot=PATH")
        return None
    return {"path": os.path.abspath(os.fspath(path)), "every_s": every_s}


class _SharedStoreBase(Administration, BaseStore[str, V]):
    """What the two store classes share; they differ only in how values are encoded."""

    # -- construction ---------------------------------------------------------------

    def __init__(
        self,
        *,
        name: str | None = None,
        runtime_dir: str | None = None,
        segment_bytes: int = 256 << 20,
        max_value_bytes: int | None = None,
        max_batch_bytes: int | None = None,
        max_store_bytes: int | None = None,
        eviction_policy: str = "none",
        ttl_s: float | None = None,
        start_timeout_s: float = 10.0,
        snapshot: str | os.PathLike[str] | None = None,
        snapshot_every_s: float | None = None,
    ) -> None:
        snapshot_config = _snapshot_config(snapshot, snapshot_every_s)
        if snapshot_config is not None:
            # Loading takes time in proportion to the file: about 1 s a GiB here; the
            # wait allows for a disk 20 times slower.
            with contextlib.suppress(OSError):
                start_timeout_s += os.path.getsize(snapshot_config["path"]) / 50e6
        limits = Limits.resolve(max_value_bytes, max_batch_bytes, max_store_bytes)
        policy = Policy.resolve(eviction_policy, ttl_s)
        options = Options.from_environment()
        if not isinstance(segment_bytes, int) or segment_bytes < 1 << 20:
            raise ValueError(
                f"segment_bytes must be an int of at least 1 MiB, got {segment_bytes!r}"
            )
        paths = StorePaths(
            runtime_dir or default_runtime_dir(), new_name() if name is None else name
        )
        authkey = claim(paths)
        try:
            manager = ManagerProcess.start(
                paths,
                authkey,
                limits=limits,
                options=options,
                policy=policy,
                segment_bytes=segment_bytes,
                start_timeout_s=start_timeout_s,
                tracking=self._tracking(),
                snapshot=snapshot_config,
            )
        except BaseException:
            paths.remove(authkey)
            raise
        self._init_proxy(paths, authkey, manager, (limits, options))

    def _tracking(self) -> dict[str, Any] | None:
        """The origin whose invalidations the manager follows: a near cache's
        (:class:`~shmstore._nearcache.NearCache`); ``None`` here."""
        return None

    def _init_proxy(
        self,
        paths: StorePaths,
        authkey: bytes | None,
        manager: ManagerProcess | None,
        config: tuple[Limits, Options] | None = None,
    ) -> None:
        self._paths = paths
        self._owned_config = config  # None: an attached proxy reads the store's header
        # (connection generation, limits and options read from the header then)
        self._config: tuple[int, tuple[Limits, Options]] | None = None
        self._client = Client(paths, authkey)
        self._reader: DirectReader | None = None
        self._reader_failed = -1  # the connection generation a reader last failed at
        # This proxy's reader-table slot, and the (fork, connection) it was given for.
        self._counters: ReaderCounters | None = None
        self._counters_for = (-1, -1)
        # The store's split_bytes_pairs (its implementation's), once its options are
        # known: an attached proxy learns them at its first request.
        self._split: Callable[[list[Any]], MsetBatch | None] | None = None
        if config is not None:
            self._split = _hot.load(config[1].implementation).split_bytes_pairs
        self._stager = Stager(paths.segment_prefix)
        self._prefaulter = Prefaulter(paths.segment_prefix)
        self._manager = manager
        # Stops the manager if the owner drops the store without closing it, or exits.
        self._stop_manager = weakref.finalize(self, manager.stop) if manager else None

    @classmethod
    def attach(cls: type[_Self], name: str, *, runtime_dir: str | None = None) -> _Self:
        """Connect to the running store ``name`` from any process of the same user.

        Attach with the class the owner used: both hold bytes in the manager, but
        :class:`SharedStore` keeps each value msgpack-encoded.

        :param name: the owner's ``store.name``.
        :param runtime_dir: the directory the owner used (default: chosen by the
            environment as for the owner; see :mod:`shmstore._runtime`).
        :raises StoreNotFoundError: no running store has that name there.
        :raises StoreConnectionError: its manager does not answer.
        :raises StorePermissionError: the runtime directory is not private to this user,
            or the manager refused this process's authkey.
        """
        proxy = cls.__new__(cls)
        proxy._init_proxy(StorePaths(runtime_dir or default_runtime_dir(), name), None, None)
        proxy._client.connect()
        return proxy

    def __reduce__(self) -> tuple[Any, ...]:
        # A proxy pickles to its address only, never to its authkey: the process that
        # unpickles it reads the key from the owner-only key file, so a pickle leaked to
        # another user grants nothing. The new proxy connects on its first request.
        return (_rebuild, (type(self), self._paths.directory, self._paths.name))

    @property
    def name(self) -> str:
        """The store's name, for :meth:`attach` from another process."""
        return self._paths.name

    @property
    def runtime_dir(self) -> str:
        """The directory holding the store's socket and key."""
        return self._paths.directory

    @property
    def manager_pid(self) -> int | None:
        """The manager's process id in the owner; ``None`` in every other process,
        forked children of the owner included."""
        manager = self._manager
        return manager.pid if manager is not None and manager.owned_here else None

    def close(self) -> None:
        """Close this proxy. In the owner process this also stops the manager, after
        which every proxy of the store, in every process, raises
        :class:`StoreConnectionError`; elsewhere it only disconnects. Idempotent."""
        self._client.close()
        self._stager.close()
        self._prefaulter.close()  # after the client's close: no request is in its wait
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        self._counters = None
        if self._stop_manager is not None:
            self._stop_manager()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self.manager_pid is not None else "proxy"
        state = ", closed" if self._client.closed else ""
        return f"{type(self).__name__}(name={self.name!r}, {role}{state})"

    # -- value encoding: overridden by the subclasses ---------------------------------

    def _encode_values(self, values: list[Any]) -> list[bytes]:
        """Each value as the bytes the manager stores; :class:`InvalidValueError` names
        the first value that cannot be stored."""
        raise NotImplementedError

    def _decode_values(self, values: list[bytes | None]) -> list[V | None]:
        raise NotImplementedError

    # -- requests -------------------------------------------------------------------

    @property
    def limits(self) -> Limits:
        """The store's size limits (``max_value_bytes``, ``max_batch_bytes``,
        ``max_store_bytes``), as set by its owner.

        :raises StoreNotFoundError: the store has stopped.
        """
        return self._store_config()[0]

    def _store_config(self) -> tuple[Limits, Options]:
        """The store's limits and data-path options: the owner's own, else those its
        manager published, read again once per connection (a new one may reach the
        store restarted under the same name)."""
        if self._owned_config is not None:
            return self._owned_config
        reader = self._reader
        if reader is not None and reader.manager_alive:
            return reader.limits, reader.options  # the store this proxy reads
        generation = self._client.generation
        if self._config is None or self._config[0] != generation:
            try:
                self._config = generation, read_header(self._paths.segment_prefix)
            except FileNotFoundError:
                raise StoreNotFoundError(f"store {self.name!r} has stopped") from None
        return self._config[1]

    def read_counters(self) -> tuple[int, int, int]:
        """``(reads, retried, fell_back)``: this proxy's direct reads in this process,
        how many of them read again because a write overlapped their keys' stripes,
        and how many were given up to the manager (see :mod:`shmstore._reader`)."""
        reader = self._reader
        if reader is None:
            return 0, 0, 0
        return reader.reads, reader.retried, reader.fell_back

    def _frame(self, *message: Any, limits: Limits | None = None) -> bytes:
        """One request, encoded; ``limits``: the store's, if the caller has just read
        them (reading them may poll the manager's pidfd)."""
        frame = proto.pack(list(message))
        limit = (limits or self.limits).max_frame_bytes
        if len(frame) > limit:
            raise LimitExceededError(
                f"the request encodes to {len(frame)} bytes, over the manager's frame limit "
                f"of {limit} (from max_batch_bytes); split it into smaller batches"
            )
        return frame

    def _check_open(self) -> None:
        if self._client.closed:
            raise StoreClosedError(f"store {self.name!r} is closed")

    def _mget_start(self, keys: Iterable[str]) -> tuple[list[str], list[bytes | None] | None]:
        """The checked keys and, if they could be read straight from shared memory,
        their raw values (``None``: the manager must answer)."""
        key_list = _checked_keys(keys)
        if self._client.closed:  # _check_open, inline on the hot path
            raise StoreClosedError(f"store {self.name!r} is closed")
        return key_list, self._read_direct(key_list) if key_list else []

    def _read_direct(self, keys: list[str]) -> list[bytes | None] | None:
        """The raw values read straight from shared memory, or ``None`` when the
        manager must answer (direct reads off, segments not mapped, the manager gone,
        or no consistent read in time)."""
        reader = self._reader
        if reader is None:
            reader = self._open_reader()
            if reader is None:
                return None
        values = reader.get_many(keys)
        if values is not None:
            if self._counters_for != (_forks[0], self._client.generation):
                self._open_counters()
            counters = self._counters
            if counters is not None:
                counters.count(values)
                return values
            return None  # no slot to count in: the manager answers, and counts
        if not reader.manager_alive:
            # Never serve a dead store's memory. The request the caller falls back to
            # raises, or, if the store was restarted under the same name, reaches the
            # new one, which the next read maps.
            self._reader = None
            reader.close()
        return values

    def _open_counters(self) -> None:
        """Ask the manager for this proxy's slot of the reader table, once per
        connection and per process; none if the table is full."""
        self._counters = None
        slot = self._client.request(proto.pack([proto.READER]))
        self._counters_for = (_forks[0], self._client.generation)
        if type(slot) is int and slot >= 0:
            try:
                table = Segment.open(L.readers_name(self._paths.segment_prefix), writable=True)
            except FileNotFoundError:
                return  # the store has just stopped: the manager's absence will tell
            hot = _hot.load(self._store_config()[1].implementation)
            self._counters = ReaderCounters(memoryview(table.buf).cast("Q"), slot, hot)

    def _open_reader(self) -> DirectReader | None:
        generation = self._client.generation
        if self._reader_failed == generation:
            return None  # tried on this connection already: the manager answers
        try:
            if not self._store_config()[1].direct_reads:
                raise ValueError("direct reads are off")
            reader = self._reader = DirectReader(self._paths.segment_prefix)
        except (OSError, ValueError, StoreNotFoundError):
            self._reader_failed = generation
            return None  # the manager answers, or its absence raises
        return reader

    def _mset_batch(self, key_value_pairs: Iterable[tuple[str, V]]) -> MsetBatch | None:
        """The batch, every item checked; ``None`` if empty."""
        keys, values = split_pairs(key_value_pairs)
        encoded = self._encode_values(values)
        self._check_open()
        if not keys:
            return None
        sizes = list(map(len, encoded))
        return keys, encoded, sizes, sum(sizes), sum(map(len, keys))

    def _mset_request(
        self,
        keys: list[str],
        values: list[bytes],
        sizes: list[int],
        total: int,
        key_chars: int,
        ttl: int | None,
    ) -> tuple[bytes, Staged | None]:
        """The request frame, and the staged values it names if they are large; a
        returned :class:`Staged` must be handed to ``self._stager.done``. Takes an
        :data:`MsetBatch`'s parts.

        :raises LimitExceededError: a value or the batch is over its limit (nothing sent).
        :raises StoreFullError: ``/dev/shm`` has no room to stage them, and they are too
            large for the socket (nothing sent).
        """
        limits, options = self._store_config()
        limits.check_batch(keys, sizes, total, key_chars)
        hot = _hot.load(options.implementation)
        self._split = hot.split_bytes_pairs
        if total < options.stage_bytes:
            return self._frame(proto.MSET, keys, values, ttl, limits=limits), None
        # Connected first: the manager then knows this process, and unlinks its staging
        # segments if it dies before the request arrives.
        self._client.connect()
        try:
            staged = self._stager.stage(values, total, self._client.generation, hot.stage_values)
        except StoreFullError:
            # No room for a staging segment: the socket carries them instead (the
            # manager may still have room in its arena, such as space freed there).
            try:
                return self._frame(proto.MSET, keys, values, ttl, limits=limits), None
            except LimitExceededError:
                pass
            raise
        try:
            return (
                self._frame(proto.MSET_SHM, keys, staged.suffix, sizes, ttl, limits=limits),
                staged,
            )
        except BaseException:
            self._stager.done(staged, replied=False)
            raise

    def _mdelete_frame(self, keys: Iterable[str]) -> bytes | None:
        key_list = _checked_keys(keys)
        self._check_open()
        return self._frame(proto.MDELETE, key_list) if key_list else None

    def _keys_frame(self, prefix: str | None) -> bytes:
        check_prefix(prefix)
        self._check_open()
        return self._frame(proto.KEYS, prefix)

    def _send_mset(self, frame: bytes, staged: Staged | None) -> None:
        """Send an ``mset`` request, then hand its staged values back to the stager."""
        replied = False
        try:
            # While a staged batch is applied, the wait clears the manager's next pages.
            self._client.request(frame, self._prefaulter.step if staged is not None else None)
            replied = True
        except StoreError as exc:
            # An error reply is a reply: the manager is done with the request. A lost
            # connection, or an interrupt, is not.
            replied = not isinstance(exc, (StoreConnectionError, StoreClosedError))
            raise
        finally:
            if staged is not None:
                self._stager.done(staged, replied)

    async def _arequest(self, frame: bytes) -> Any:
        # One hop to the default executor per call, never per key. The request runs to
        # completion on its thread even if the awaiting task is cancelled, so the
        # connection never falls out of step.
        return await asyncio.get_running_loop().run_in_executor(None, self._client.request, frame)

    # -- the BaseStore interface ------------------------------------------------------

    def mget(self, keys: Iterable[str]) -> list[V | None]:
        """Get the values of ``keys``: one item per key, in order, duplicates kept,
        ``None`` for a key that is not in the store.

        The proxy reads the store's shared memory itself, without a request, and the
        whole batch is as of one moment: it never mixes values from before and after an
        ``mset`` (see :mod:`shmstore._reader`). Where that is off, the manager answers.

        :param keys: a sequence of ``str``; an empty one returns ``[]`` without a request.
        :raises InvalidKeyError: a key is not a ``str`` (nothing is sent).
        :raises StoreConnectionError: the manager cannot be reached.
        """
        key_list, values = self._mget_start(keys)
        if values is None:
            values = self._client.request(self._frame(proto.MGET, key_list))
        return self._decode_values(values)

    def mset(
        self, key_value_pairs: Iterable[tuple[str, V]], *, ttl_s: Any = _STORE_TTL
    ) -> None:
        """Set the pairs, in order, so the last value of a repeated key wins.

        :param ttl_s: seconds the batch lives (a positive number), ``None`` for ever;
            default: the store's ``ttl_s``. The deadline is set when the manager
            applies the batch, on ``CLOCK_MONOTONIC``, and reads do not extend it.

        The batch is atomic: a concurrent ``mget`` in any process sees all of its pairs
        or none, and a failed call applied none of them, except that a
        :class:`StoreConnectionError` raised after the request was sent leaves it
        unknown whether the whole batch was applied. Values adding up to at least
        ``SHMSTORE_STAGE_BYTES`` (default 64 KiB) travel through a shared-memory
        staging segment, not the socket.

        :raises InvalidBatchError: an item is not a pair, its key not a ``str``, or its
            value not storable (:class:`InvalidKeyError`, :class:`InvalidValueError`).
        :raises LimitExceededError: a value is over ``max_value_bytes``
            (:class:`ValueTooLargeError`), the batch's keys and values over
            ``max_batch_bytes`` (:class:`BatchTooLargeError`), or the store would grow
            past ``max_store_bytes`` (:class:`StoreTooLargeError`); nothing applied.
        :raises StoreFullError: ``/dev/shm`` has no room for it (nothing applied).
        :raises StoreConnectionError: the manager cannot be reached.
        :raises ValueError: ``ttl_s`` is not ``None`` or a positive number.
        """
        ttl = _ttl_arg(ttl_s)
        batch = self._mset_batch(key_value_pairs)
        if batch is None:
            return
        self._send_mset(*self._mset_request(*batch, ttl))

    def mdelete(self, keys: Iterable[str]) -> None:
        """Delete ``keys``; keys that are not in the store are ignored. Atomic like ``mset``.

        :raises InvalidKeyError: a key is not a ``str`` (nothing is sent).
        :raises StoreConnectionError: the manager cannot be reached.
        """
        frame = self._mdelete_frame(keys)
        if frame:
            self._client.request(frame)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """Yield the keys ``k`` with ``k.startswith(prefix)`` (every key if ``prefix`` is
        ``None`` or ``""``), as of one moment: the keys are fetched in one request when
        iteration starts.

        :raises InvalidKeyError: ``prefix`` is not a ``str`` or ``None``.
        :raises StoreConnectionError: the manager cannot be reached.
        """
        yield from self._client.request(self._keys_frame(prefix))

    async def amget(self, keys: Iterable[str]) -> list[V | None]:
        """Async :meth:`mget`: a direct read runs in the caller's thread (it never
        waits for another process); a read the manager must answer takes one executor
        hop."""
        key_list, values = self._mget_start(keys)
        if values is None:
            values = await self._arequest(self._frame(proto.MGET, key_list))
        return self._decode_values(values)

    async def amset(
        self, key_value_pairs: Iterable[tuple[str, V]], *, ttl_s: Any = _STORE_TTL
    ) -> None:
        """Async :meth:`mset`: one executor hop per call."""
        ttl = _ttl_arg(ttl_s)
        batch = self._mset_batch(key_value_pairs)
        if batch is None:
            return
        # The staged values are released on the executor's thread, once the request is
        # over, even if the awaiting task is cancelled.
        frame, staged = self._mset_request(*batch, ttl)
        await asyncio.get_running_loop().run_in_executor(None, self._send_mset, frame, staged)

    async def amdelete(self, keys: Iterable[str]) -> None:
        """Async :meth:`mdelete`: one executor hop per call."""
        frame = self._mdelete_frame(keys)
        if frame:
            await self._arequest(frame)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        """Async :meth:`yield_keys`: one executor hop when iteration starts, none per key."""
        for key in await self._arequest(self._keys_frame(prefix)):
            yield key


class SharedByteStore(_SharedStoreBase[bytes]):
    """A ``str -> bytes`` store shared by every process of a job; the shared twin of
    LangChain's ``InMemoryByteStore``, with the same semantics.

    Constructing one starts its manager process and makes this process the owner::

        with SharedByteStore() as store:
            store.mset([("k1", b"v1")])
            pool.map(work, [store] * 100)   # the proxy pickles to a handle

    The manager stops when the owner closes the store, drops it, or exits (even by
    SIGKILL). Other processes get proxies by unpickling this one (pool arguments,
    ``initializer=``, fork, spawn, forkserver, joblib) or by :meth:`attach`.

    Values may be ``bytes``, ``bytearray`` or ``memoryview``; ``mget`` returns ``bytes``.

    :param name: the store's name, 1-64 of ``[A-Za-z0-9_.-]`` (default: 16 random hex
        digits). A store of that name must not be running.
    :param runtime_dir: the private directory for the socket and key (default:
        ``$SHMSTORE_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/shmstore`` or
        ``<tmp>/shmstore-<uid>``).
    :param segment_bytes: virtual size in bytes of each shared-memory arena segment
        (default 256 MiB, at least 1 MiB). Pages are reserved only as values fill it,
        so a larger size costs address space, not memory; the arena grows by whole
        segments, and a value larger than this gets a segment of its own.
    :param max_value_bytes: largest value in bytes (default 512 MiB).
    :param max_batch_bytes: largest ``mset``, its keys (UTF-8) and values, in bytes
        (default 1 GiB); it also bounds every request the manager reads.
    :param max_store_bytes: most bytes of keys and values the store holds at once
        (default: three quarters of the size of ``/dev/shm``).
    :param eviction_policy: ``"none"`` (default: a write that would take the store
        past ``max_store_bytes`` raises :class:`StoreTooLargeError`, as a store should)
        or ``"sieve"`` (it evicts entries first, in the same atomic write, so the bound
        always holds; only a batch whose own keys and values exceed it raises). See
        the README's "A bounded cache".
    :param ttl_s: seconds each write lives by default (a positive number; ``None``,
        the default: for ever); ``mset(..., ttl_s=...)`` overrides it per batch. An
        expired entry is a miss for every process at once and is never listed.
    :param start_timeout_s: seconds to wait for the manager to start (default 10; a
        snapshot to load adds time in proportion to its size).
    :param snapshot: a snapshot file (see :meth:`save`): the store starts with its
        contents if it exists (empty if not), keeping insertion order and time-to-live
        deadlines (on the wall clock; entries already past theirs are not loaded), and
        its manager saves to it when the store stops (the owner's ``close()``,
        :meth:`stop`, or the owner's exit), and every ``snapshot_every_s`` seconds.
    :param snapshot_every_s: seconds between saves to ``snapshot`` (default: only when
        the store stops).
    :raises SnapshotError: ``snapshot`` exists but is not a snapshot, is of another
        format, truncated or damaged (the message says which); nothing was loaded and
        no store was started.
    :raises StoreError: the manager could not be started; nothing is left running.
    :raises StorePermissionError: the runtime directory is not private to this user.
    :raises ValueError: ``name`` is not a valid store name, or an option is out of range.
    """

    def _encode_values(self, values: list[Any]) -> list[bytes]:
        return encode_bytes(values)

    def _mset_batch(self, key_value_pairs: Iterable[tuple[str, bytes]]) -> MsetBatch | None:
        # A list of (str, bytes) tuples, the common batch, is taken apart by one hot
        # function; anything else by the general path, which names a wrong item.
        split = self._split
        if split is not None and type(key_value_pairs) is list:
            batch = split(key_value_pairs)
            if batch is not None:
                self._check_open()
                return batch if batch[0] else None
        return super()._mset_batch(key_value_pairs)

    def _decode_values(self, values: list[bytes | None]) -> list[bytes | None]:
        return values


class SharedStore(_SharedStoreBase[Any]):
    """A ``str -> value`` store shared by every process of a job; the shared twin of
    LangChain's ``InMemoryStore``.

    Values are anything msgpack represents exactly: ``None``, ``bool``, ``int`` (64-bit),
    ``float``, ``str``, ``bytes``, and ``list`` and ``dict`` of those (dict keys of those
    scalar types). They are stored encoded, so ``mget`` returns equal copies, never the
    objects given to ``mset``. Types that would come back as something else are refused
    rather than converted: a ``tuple`` (it would return as a ``list``), a ``set``,
    subclasses such as ``OrderedDict`` or ``numpy.float64``. A ``bytearray`` is stored as
    msgpack bin and comes back as ``bytes``, as in :class:`SharedByteStore`.

    Construction, ownership and pickling are as for :class:`SharedByteStore`.
    """

    def _encode_values(self, values: list[Any]) -> list[bytes]:
        return encode_msgpack(values)

    def _decode_values(self, values: list[bytes | None]) -> list[Any]:
        return decode_msgpack(values)


# Proxies rebuilt from pickles in this process, by class and address. A worker that
# receives the store with every task reuses one proxy, and so one connection, for all of
# them; without a strong reference here each task's proxy would be collected, and its
# connection closed, as soon as the task returned.
_rebuilt: dict[tuple[Any, ...], _SharedStoreBase[Any]] = {}


def _rebuild(cls: type[_SharedStoreBase[Any]], directory: str, name: str) -> Any:
    key = (cls, directory, name)
    proxy = _rebuilt.get(key)
    if proxy is None or proxy._client.closed:
        proxy = cls.__new__(cls)
        proxy._init_proxy(StorePaths(directory, name), None, None)
        _rebuilt[key] = proxy
    return proxy
