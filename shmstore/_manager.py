"""The manager process: it owns a store's :class:`~shmstore._table.Table` and serves
batched requests from every proxy.

The owner starts it as ``python -m shmstore._manager`` (see :mod:`shmstore._launcher`),
writes its configuration as one msgpack map to its stdin, and waits for the line
``ready`` on its stdout. Then:

* **a thread per new connection** runs the authkey challenge (with a deadline, so a
  peer that never answers holds up only its own thread) and hands the connection to
  the main thread.
* **the main thread** serves every connection from one event loop (:mod:`selectors`,
  :mod:`shmstore._connections`), each connection a :class:`~shmstore._channel.Channel`
  read and written without blocking: a client that stalls mid-frame, or leaves its
  replies unread, stalls nobody else. For each request it completes: decode it, apply
  it to the table under the table lock, send the reply. An ``mset`` is acknowledged as
  soon as the manager needs nothing more from its client, inside the write window (its
  keys' stripes odd), and finished while the client prepares its next request (see
  :meth:`Table.set_many <shmstore._table.Table.set_many>`). The table publishes each
  write batch under its keys' stripe versions, so every batch is atomic to every other
  process without any lock a client could hold; the table lock is there for the
  threads below. A snapshot request is written by a thread of its own, the loop
  serving the other clients meanwhile. One thread serving every client, rather than a
  thread each, is what lets several writers get what one gets: the threads spent the
  manager's CPU on handing the GIL and the table lock to one another (see
  :mod:`shmstore._channel`). While requests come often, the loop polls for the next
  one before it blocks (:class:`~shmstore._spin.IdleSpin`), so its CPU does not go
  idle between a writer's batches; and before it polls, it reserves arena pages
  ahead of need, a few at a time (:meth:`Arena.reserve_ahead
  <shmstore._arena.Arena.reserve_ahead>`), so a batch seldom waits for the kernel to
  clear fresh pages. When a process's last connection ends, the staging
  segments it left are unlinked.
* **a tracker thread**, in a near cache only (:mod:`shmstore._nearcache`), holds the
  origin Redis server's tracking connection (:mod:`shmstore._tracking`) and applies
  what it reports: each invalidation removes its keys and takes the next number of
  the invalidation sequence (:mod:`shmstore._invalidation`), which decides whether a
  proxy's later fill may be stored; a flush or a lost connection empties the store.
* **a sweeper thread** reclaims expired entries once their deadline has passed
  (:class:`_Sweeper`), so an idle store does not hold expired data; it sleeps while
  nothing is due.
* **the main thread's loop** also accepts connections and waits for the end: SIGTERM
  (how the owner's ``close()`` stops the manager; ``signal.set_wakeup_fd`` wakes the
  wait) or the owner's exit, even by SIGKILL, seen through a pidfd (Linux 5.3+) or,
  elsewhere, by polling the parent pid once a second. It then unlinks the segments, socket and key
  and exits, which closes every connection, so a dead job leaves no process, no file
  and no shared memory behind.

SIGINT is ignored (the manager also runs in its own session): Ctrl-C in a terminal is
meant for the owner, which then closes the store.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

import msgpack

from . import _hot
from . import _protocol as proto
from ._channel import Channel
from ._connections import Connections, Reply
from ._errors import ProtocolError, StoreError
from ._invalidation import Invalidations
from ._limits import Limits
from ._options import Options
from ._persistence import Snapshots
from ._policy import Policy
from ._runtime import StorePaths
from ._segment import Segment
from ._spin import IdleSpin
from ._staging import KEEP_BYTES
from ._stats import ReaderTable
from ._table import RunOfValues, Table

# typing is imported for the type checker only: the manager imports this module, and
# at run time typing would cost that process memory for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["Manager", "main"]

#: Seconds a new connection may take to complete the authkey challenge.
HANDSHAKE_TIMEOUT_S = 5.0
#: Seconds between checks of the parent pid where pidfds are not available.
_OWNER_POLL_S = 1.0


def _set_socket_timeouts(fd: int, seconds: float) -> None:
    # Kernel-level timeouts (SO_RCVTIMEO/SO_SNDTIMEO) make the blocking reads inside
    # multiprocessing's challenge fail with EAGAIN instead of waiting forever.
    sock = socket.socket(fileno=fd)
    try:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    finally:
        sock.detach()


class Manager:
    """The server side of one store. Used only inside the manager process.

    :param paths: where the socket is bound; its key file is removed on exit with it.
    :param authkey: the secret every client must prove it holds.
    :param owner_pid: the process whose exit stops the manager.
    :param limits: the store's size limits; a client sending a frame over
        ``limits.max_frame_bytes`` loses its connection.
    :param segment_bytes: virtual size of each arena segment.
    :param options: the store's data-path options (:mod:`shmstore._options`).
    :param policy: the store's cache policy (:mod:`shmstore._policy`).
    :param tracking: for a near cache, its origin: ``{"url", "prefix", "timeout_s"}``
        (see :class:`~shmstore._tracking.Tracker`); ``None`` for any other store.
    :param snapshot: the store's own snapshot file, ``{"path", "every_s"}``: loaded at
        :meth:`open`, saved every ``every_s`` seconds (if not ``None``) and when the
        manager stops; ``None``: none.
    """

    def __init__(
        self,
        paths: StorePaths,
        authkey: bytes,
        owner_pid: int,
        limits: Limits,
        segment_bytes: int,
        options: Options,
        policy: Policy,
        tracking: dict[str, Any] | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> None:
        self._paths = paths
        self._started_ns = time.time_ns()
        self._snapshot = snapshot or {}
        self._snapshots: Snapshots | None = None
        self._tracking = tracking
        self._invalidations: Invalidations | None = None
        self._tracker: Any = None
        self._table_closed = False
        self._options = options
        self._policy = policy
        self._authkey = authkey
        self._owner_pid = owner_pid
        self._limits = limits
        self._segment_bytes = segment_bytes
        self._table: Table | None = None  # created by open(): its segments outlive errors
        self._hot = _hot.load(options.implementation)
        self._readers: ReaderTable | None = None
        self._sweeper: _Sweeper | None = None
        self._table_lock = threading.Lock()
        # Live connections per client pid: a process's staging segments are removed
        # when its last connection ends, not when one of several does.
        self._peers: collections.Counter[int] = collections.Counter()
        self._peers_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._owner_fd: int | None = None
        # The C-level signal handler writes here (signal.set_wakeup_fd) to wake the wait.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        # Work other threads hand to the main thread (a connection through its
        # handshake, a snapshot's reply), run there after the next wake-up; the lock
        # keeps a late thread from writing to the wake pipe once it is closed.
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._calls_lock = threading.Lock()
        self._calls_closed = False
        self._connections = Connections(self._selector, self._handle, self._dropped)

    # -- start-up -------------------------------------------------------------------

    def open(self) -> None:
        """Bind the socket (mode 0600) and start watching the owner and SIGTERM.

        :raises OSError: the socket cannot be bound.
        :raises StoreError: the owner is already gone.
        """
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket file is created 0600, never wider
        try:
            listener.bind(self._paths.socket)
        finally:
            os.umask(old_umask)
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._table = Table(
            self._paths.segment_prefix,
            self._segment_bytes,
            self._limits,
            self._options,
            self._policy,
        )
        self._snapshots = Snapshots(
            self._table,
            self._table_lock,
            self._snapshot.get("path"),
            self._snapshot.get("every_s"),
        )
        self._snapshots.load_own()  # before any client: a damaged file stops the start
        self._snapshots.start()
        self._readers = ReaderTable(self._paths.segment_prefix, self._table.header)
        self._sweeper = _Sweeper(self._table, self._table_lock)
        if self._tracking is not None:
            self._start_tracker(self._table, self._tracking)
        self._selector.register(listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._drain_wakeups)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self.stop_soon)
        self._watch_owner()
        # Last, in this (the main) thread, which lives as long as the process: readers
        # tell the manager runs by a load of the header from here on. Should the mutex
        # fail, they poll its pidfd instead, as for a pure-Python manager.
        with contextlib.suppress(OSError):
            self._hot.hold_liveness(self._table.header)

    def _start_tracker(self, table: Table, tracking: dict[str, Any]) -> None:
        from ._tracking import CLIENT_NAME, Tracker

        invalidations = self._invalidations = Invalidations(table.header)
        lock = self._table_lock
        # Each runs on the tracker's thread, under the table lock, and does nothing
        # once the manager has begun to close the table.

        def on_keys(keys: list[str]) -> None:
            with lock:
                if not self._table_closed:
                    table.delete_many(keys)
                    invalidations.record(keys)

        def on_all() -> None:
            with lock:
                if not self._table_closed:
                    table.delete_many(table.keys(None))
                    invalidations.record_all()

        def on_ready() -> None:
            with lock:
                invalidations.tracking = True
                invalidations.record_all()  # fills that read the origin before it: refused

        def on_lost() -> None:
            with lock:
                invalidations.tracking = False
                if not self._table_closed:
                    table.delete_many(table.keys(None))
                    invalidations.record_all()

        self._tracker = Tracker(
            tracking["url"],
            tracking["prefix"],
            tracking["timeout_s"],
            on_keys,
            on_all,
            on_ready,
            on_lost,
            f"{CLIENT_NAME}{os.getpid()}",
        )

    def _watch_owner(self) -> None:
        try:
            self._owner_fd = os.pidfd_open(self._owner_pid)
        except (AttributeError, OSError):
            self._owner_fd = None  # no pidfds here: poll the parent pid instead
        # Checked after opening the pidfd: if the owner is still our parent now, the
        # pidfd names the owner and not a process that reused its pid.
        if os.getppid() != self._owner_pid:
            raise StoreError("the owner exited before the manager started")
        if self._owner_fd is not None:
            self._selector.register(self._owner_fd, selectors.EVENT_READ, self._owner_exited)

    # -- the main thread --------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until the owner exits or SIGTERM arrives; then clean up."""
        poll_s = None if self._owner_fd is not None else _OWNER_POLL_S
        try:
            wait = IdleSpin(self._selector.select, work=self._reserve_ahead).wait
            while not self._stopping:
                for key, _events in wait(poll_s):
                    self._dispatch(key.data, key.fileobj)
                if poll_s is not None and os.getppid() != self._owner_pid:
                    self._stopping = True
        finally:
            self._close()

    def _reserve_ahead(self) -> bool:
        """The loop's work while no request waits: one step of reserving arena pages
        ahead of need; whether there was any."""
        table = self._table
        if table is None:
            return False
        with self._table_lock:
            return table.reserve_ahead()

    def _dispatch(self, callback: Callable[[Any], None], fileobj: Any) -> None:
        if not self._connections.dispatch(callback, fileobj):
            callback(fileobj)

    def stop_soon(self, _signum: int = 0, _frame: Any = None) -> None:
        """Make :meth:`serve_forever` return; usable as a signal handler."""
        self._stopping = True

    def _accept(self, listener: Any) -> None:
        try:
            raw, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        # The kernel's word on who connected: another user is refused outright (only
        # root could get past the 0700 directory), and the pid names the peer's
        # staging segments, to check its requests and clean up after it.
        pid, uid, _gid = struct.unpack(
            "3i", raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )
        if uid != os.getuid():
            raw.close()
            return
        raw.setblocking(True)
        connection = Connection(raw.detach())
        # Counted from the accept, not from the end of the handshake: a proxy that
        # replaces its connection stages its next batch as soon as its own side of the
        # handshake is done, and the end of its old connection must not remove that
        # segment as the last of the process's.
        with self._peers_lock:
            self._peers[pid] += 1
        threading.Thread(target=self._admit, args=(connection, pid), daemon=True).start()

    def _admit(self, connection: Connection, peer_pid: int) -> None:
        """A new connection's thread: the authkey challenge, with a deadline, so that a
        peer that never answers holds up only this thread; then the connection joins
        the main thread's loop. Nothing an unauthenticated peer sends is decoded: the
        challenge reads only its fixed-size HMAC exchange."""
        try:
            _set_socket_timeouts(connection.fileno(), HANDSHAKE_TIMEOUT_S)
            deliver_challenge(connection, self._authkey)
            answer_challenge(connection, self._authkey)
            _set_socket_timeouts(connection.fileno(), 0)
            channel = Channel(connection, peer_pid, self._limits.max_frame_bytes, _Session())
        except Exception:
            # A failed or abandoned challenge: it never was a client.
            self._peer_left(peer_pid)
            connection.close()
            return
        if not self._call_soon(lambda: self._connections.listen(channel)):
            self._peer_left(peer_pid)
            channel.close()

    def _call_soon(self, call: Callable[[], None]) -> bool:
        """Have the main thread run ``call`` (from any thread); ``False`` if the
        manager is closing and never will."""
        with self._calls_lock:
            if self._calls_closed:
                return False
            self._calls.append(call)
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending
                os.write(self._wake_w, b"\0")
        return True

    def _drain_wakeups(self, _wake_r: Any) -> None:
        os.read(self._wake_r, 4096)  # wake-ups carry no data; the loop rechecks _stopping
        calls = self._calls
        while calls:
            calls.popleft()()

    def _owner_exited(self, _fd: Any) -> None:
        self._stopping = True

    def _close(self) -> None:
        # Connections stay open until the process exits (their end tells every client
        # at once that the store is gone, its snapshot saved); handshake threads are
        # daemons.
        if self._listener is not None:
            self._listener.close()
        if self._sweeper is not None:
            self._sweeper.stop()
        if self._tracker is not None:
            self._tracker.stop()
        if self._snapshots is not None:
            self._snapshots.stop()
            try:
                self._snapshots.save_own()
            except OSError:
                import traceback  # only here: kept out of the manager's memory otherwise

                traceback.print_exc(file=sys.stderr)
        with self._table_lock:
            self._table_closed = True
            if self._readers is not None:
                self._readers.close()
            if self._table is not None:
                # Before the header is unmapped: the kernel could not mark a mutex there.
                self._hot.release_liveness(self._table.header)
                self._table.close()
        self._paths.remove(self._authkey)
        signal.set_wakeup_fd(-1)
        with self._calls_lock:
            self._calls_closed = True
        os.close(self._wake_w)
        os.close(self._wake_r)
        if self._owner_fd is not None:
            os.close(self._owner_fd)
        self._selector.close()

    # -- connection threads -----------------------------------------------------------

    def _dropped(self, channel: Channel) -> None:
        """A connection ends: release what the manager kept for it."""
        session: _Session = channel.session
        session.staging.close()
        if session.reader_slot >= 0 and self._readers is not None:
            with self._table_lock:
                self._readers.release(session.reader_slot)
        self._peer_left(channel.peer_pid)

    def _peer_left(self, peer_pid: int) -> None:
        with self._peers_lock:
            self._peers[peer_pid] -= 1
            if self._peers[peer_pid] == 0:
                del self._peers[peer_pid]
                # A client killed between staging values and sending them leaves its
                # staging segment behind; nobody else will ever unlink it.
                self._paths.remove_segments(f"s{peer_pid}.")

    def _handle(self, frame: bytes, reply: Reply) -> bool:
        """Serve one request frame and send its reply (or have it sent: a snapshot is
        written off the loop); whether to keep the connection."""
        channel = reply.channel
        session: _Session = channel.session
        try:
            batch = self._hot.parse_mset(frame)  # the most common request, at C speed
            if batch is not None:
                keys, values, ttl = batch
                with self._table_lock:
                    self._set_encoded(keys, values, ttl, reply)
                reply.send(proto.ok_reply(None))
                return True
            staged = self._hot.parse_mset_shm(frame)  # a large one, staged
            if staged is None:
                op, args = proto.parse_request(frame)
                if op == proto.MSET_SHM:  # in a form the fast decoding declines
                    staged = (proto.encode_keys(args[0]), *args[1:])
            if staged is not None:
                self._mset_staged(channel.peer_pid, session, reply, *staged)
                reply.send(proto.ok_reply(None))
                return True
            result: Any
            if op == proto.SAVE:
                # Seconds for a large store: written by a thread of its own, so the
                # loop serves the other clients meanwhile (the table lock is held only
                # briefly); this channel waits for it.
                channel.waiting = True
                threading.Thread(
                    target=self._save_then_reply, args=(args[0], reply), daemon=True
                ).start()
                return True
            if op == proto.INFO:
                result = self._info()
            elif op == proto.STOP:
                reply.send(proto.ok_reply(None))
                self._stopping = True
                os.write(self._wake_w, b"\0")  # wakes the main thread's wait
                # The connection stays: its end, at this process's exit, tells the
                # client the store is gone (its snapshot saved).
                return True
            else:
                with self._table_lock:
                    result = self._apply(op, args, session, reply)
            reply.send(proto.ok_reply(result))
            return True
        except ProtocolError as exc:
            reply.send(proto.error_reply(exc))
            return False
        except StoreError as exc:
            reply.send(proto.error_reply(exc))
            return True
        except Exception as exc:  # a bug in the manager: report it, keep serving
            import traceback  # only here: kept out of the manager's memory otherwise

            traceback.print_exc(file=sys.stderr)
            reply.send(proto.error_reply(StoreError(f"manager error: {exc!r}")))
            return True

    def _apply(
        self,
        op: int,
        args: list[Any],
        session: _Session,
        reply: Reply,
    ) -> Any:
        table = self._table
        assert table is not None
        if op == proto.MGET:
            return table.get_many(args[0])
        if op == proto.MSET:
            # Acknowledged once it can no longer fail, and applied while the client
            # prepares its next request.
            table.set_many(args[0], args[1], reply.acknowledge, args[2])
            self._wake_sweeper(table, args[2])
        elif op == proto.MDELETE:
            table.delete_many(args[0])
        elif op == proto.KEYS:
            return table.keys(args[0])
        elif op == proto.INVALIDATE:
            table.delete_many(args[0])
            return self._near().record(args[0])
        elif op == proto.FILL:
            self._fill(table, *args)
        elif op == proto.READER:
            assert self._readers is not None
            if session.reader_slot < 0:
                session.reader_slot = self._readers.assign()
            return session.reader_slot
        return None

    def _mset_staged(
        self,
        peer_pid: int,
        session: _Session,
        reply: Reply,
        keys: list[bytes],
        name: str,
        lengths: list[int],
        ttl: int | None,
    ) -> None:
        """An ``MSET_SHM`` request, its keys encoded: as ``MSET``, the values in the
        client's staging segment ``name``.

        :raises ProtocolError: the segment is not the client's own, or its values would
            overrun it.
        """
        if not name.startswith(f"s{peer_pid}."):
            raise ProtocolError("a client may only send its own staging segments")
        table = self._table
        assert table is not None
        # The values are copied once, from the client's staging segment into the arena,
        # after the acknowledgment: the client reuses the segment only once a later
        # request has its reply, by when this one is done (see shmstore._staging), and
        # one it removes stays mapped here.
        staging = session.staging
        segment = staging.open(self._paths.segment_prefix + name)
        try:
            if sum(lengths) > segment.size:
                raise ProtocolError("the staged values overrun their segment")
            values = RunOfValues(segment.buf, lengths)
            with self._table_lock:
                table.set_encoded(keys, values, reply.acknowledge, ttl, values_stay=True)
        finally:
            staging.done(segment)
        self._wake_sweeper(table, ttl)

    def _set_encoded(
        self, keys: list[bytes], values: list[bytes], ttl: int | None, reply: Reply
    ) -> None:
        """An ``mset`` whose frame :func:`~shmstore._hot.fallback.parse_mset` decoded:
        as ``MSET`` in :meth:`_apply`, acknowledged once it can no longer fail."""
        table = self._table
        assert table is not None
        table.set_encoded(keys, values, reply.acknowledge, ttl)
        self._wake_sweeper(table, ttl)

    def _info(self) -> dict[str, Any]:
        with self._peers_lock:
            clients = len(self._peers)
        return {
            "pid": os.getpid(),
            "owner_pid": self._owner_pid,
            "started": self._started_ns,
            "clients": clients,
            "snapshot": self._snapshot.get("path"),
        }

    def _save_then_reply(self, path: str, reply: Reply) -> None:
        """A snapshot request's thread: write it, then have the loop send the reply
        and serve the channel again."""
        try:
            frame = proto.ok_reply(self._save(path))
        except StoreError as exc:
            frame = proto.error_reply(exc)
        except Exception as exc:  # a bug in the manager: report it, keep serving
            import traceback  # only here: kept out of the manager's memory otherwise

            traceback.print_exc(file=sys.stderr)
            frame = proto.error_reply(StoreError(f"manager error: {exc!r}"))

        def send() -> None:
            channel = reply.channel
            channel.waiting = False
            reply.send(frame)
            if reply.error is not None:
                self._connections.drop(channel)
            else:
                self._connections.resume(channel)

        self._call_soon(send)

    def _save(self, path: str) -> int:
        assert self._snapshots is not None
        try:
            return self._snapshots.save(path)
        except OSError as exc:
            raise StoreError(f"cannot write the snapshot {path}: {exc}") from exc

    def _near(self) -> Invalidations:
        if self._invalidations is None:
            raise ProtocolError("this store is not a near cache")
        return self._invalidations

    def _fill(
        self, table: Table, keys: list[str], values: list[bytes], ttl: int, seen: int
    ) -> None:
        """Store the keys of a near cache's fill that no invalidation applied after
        ``seen`` has touched; remove the others. Best effort: a fill the store has no
        room for is dropped (the next read asks the origin again)."""
        fresh = self._near().fresh(keys, seen)
        stale = [key for key, ok in zip(keys, fresh, strict=True) if not ok]
        if stale:
            table.delete_many(stale)
            kept = [(k, v) for k, v, ok in zip(keys, values, fresh, strict=True) if ok]
            keys, values = [k for k, _ in kept], [v for _, v in kept]
        if keys:
            try:
                table.set_many(keys, values, None, ttl)
            except StoreError:
                table.delete_many(keys)
            self._wake_sweeper(table, ttl)

    def _wake_sweeper(self, table: Table, ttl: int | None) -> None:
        if self._sweeper is not None and (ttl or (ttl is None and table.policy.ttl_ns)):
            self._sweeper.wake()


class _Sweeper:
    """A thread that reclaims expired entries when their deadline passes
    (:meth:`Table.sweep <shmstore._table.Table.sweep>`), a few thousand per hold of the
    table lock. It sleeps until the next deadline recorded, or until a write with a time
    to live wakes it to look again."""

    #: Longest sleep: a bound on how late a deadline recorded while asleep is noticed
    #: if no wake-up came (there always is one; this is a safety net).
    MAX_SLEEP_S = 1.0

    def __init__(self, table: Table, table_lock: threading.Lock) -> None:
        self._table = table
        self._table_lock = table_lock
        self._wanted = threading.Event()
        self._stopping = False
        self._next: int | None = None  # the deadline it sleeps until
        self._thread = threading.Thread(target=self._run, name="sweeper", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look again at the deadlines, unless asleep until one at least as early (an
        unlocked hint: a stale answer only costs a look)."""
        if self._next is None or self._table.next_deadline_before(self._next):
            self._wanted.set()

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping:
            with self._table_lock:
                self._next = deadline = self._table.sweep()
            if deadline is None:
                timeout = None
            else:
                timeout = (deadline - time.monotonic_ns()) / 1e9
                if timeout <= 0:
                    continue  # more is due: sweep again, letting writes in between
                timeout = min(timeout, self.MAX_SLEEP_S)
            self._wanted.wait(timeout)
            self._wanted.clear()


class _Session:
    """What the manager keeps of one connection: its reader-table slot and its
    mapping of the client's staging segment."""

    __slots__ = ("reader_slot", "staging")

    def __init__(self) -> None:
        self.reader_slot = -1
        self.staging = _MappedStaging()


class _MappedStaging:
    """One connection's mappings of its client's kept staging segments (two, used in
    turn: see :mod:`shmstore._staging`), so that their pages are mapped once, not at
    every request; other segments are unmapped after use."""

    KEPT = 2

    def __init__(self) -> None:
        self._segments: dict[str, Segment] = {}  # by name, the last used last

    def open(self, name: str) -> Segment:
        """The segment ``name``, mapped read-only.

        :raises ProtocolError: there is no such segment.
        """
        segment = self._segments.pop(name, None)
        if segment is not None:
            self._segments[name] = segment
            return segment
        try:
            return Segment.open(name)
        except FileNotFoundError as exc:
            raise ProtocolError(f"no staging segment {name!r}") from exc

    def done(self, segment: Segment) -> None:
        if segment.size > KEEP_BYTES:
            segment.close()
            return
        self._segments[segment.name] = segment
        while len(self._segments) > self.KEPT:  # the client has replaced one
            self._segments.pop(next(iter(self._segments))).close()

    def close(self) -> None:
        segments, self._segments = self._segments, {}
        for segment in segments.values():
            segment.close()


def main() -> int:
    """Entry point of the manager process; see the module docstring for the start-up
    exchange with the owner."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = msgpack.unpackb(sys.stdin.buffer.read())
    paths = StorePaths(config["directory"], config["name"])
    manager = Manager(
        paths,
        config["authkey"],
        config["owner_pid"],
        Limits(**config["limits"]),
        config["segment_bytes"],
        Options(**config["options"]),
        Policy(**config["policy"]),
        config.get("tracking"),
        config.get("snapshot"),
    )
    try:
        manager.open()
    except Exception as exc:
        paths.remove(config["authkey"])
        # The kind first, so the owner raises the same class (a SnapshotError, say).
        message = str(exc).replace("\n", " ")
        sys.stdout.write(f"error: {type(exc).__name__}: {message}\n")
        return 1
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # The owner reads one line; from now on the manager writes nowhere but stderr.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    # The objects made so far live as long as the process: the collector need not scan
    # them again. Requests allocate many short-lived objects and form no cycles but
    # those of the odd exception, so collections are made rare rather than off: at
    # Python's default threshold they took a tenth of the manager's time on batched
    # writes (py-spy, 64 values of 1.5 kB a batch).
    gc.freeze()
    gc.set_threshold(100_000, 20, 100)
    manager.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
