"""The stores a user would pick instead of shmstore, behind one small interface.

Each peer is started in the benchmark's main process (:meth:`Peer.start` returns a
picklable handle) and used from worker processes through :meth:`Peer.connect`, which
returns a client with ``mset(pairs)`` and ``mget(keys)``, each one batch, used the way
that peer's users would batch. :meth:`Peer.footprint` is the memory it holds: its
server's private (anonymous) resident memory plus what it keeps in shared memory or
files. Add a peer by subclassing :class:`Peer` and listing it in :data:`PEERS`; a peer
whose software is missing reports why and is left out of the run.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.managers import BaseManager
from typing import Any


def rss_anon(pid: int) -> int:
    """A process's private resident memory in bytes (shared mappings not counted)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"no RssAnon for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used, user and system, all its threads (the ones that
    have ended included), in seconds; to the kernel's clock tick (10 ms here)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def allocated(path: str) -> int:
    """Bytes allocated on disk (or tmpfs) for a file or everything under a directory."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    return sum(
        os.stat(os.path.join(root, name)).st_blocks * 512
        for root, _, names in os.walk(path)
        for name in names
    )


class Peer:
    name: str
    shared = True  # False: each process has its own copy (the one-process ceiling)

    def start(self) -> Any:
        """Start the store in this process; return a picklable handle for workers."""
        return None

    def stop(self) -> None:
        pass

    @staticmethod
    def connect(handle: Any) -> Any:
        """In a worker: an object with mset(pairs) and mget(keys)."""
        raise NotImplementedError

    @staticmethod
    def disconnect(client: Any) -> None:
        """Let go of a client from :meth:`connect` whose work is done (default: nothing)."""

    def footprint(self) -> int | None:
        """Bytes of memory the running store holds, or None if not measured."""
        return None

    def server_pid(self) -> int | None:
        """The process that serves every client's requests, or None if none does."""
        return None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this peer cannot run here, or None."""
        return None


class ShmStorePeer(Peer):
    name = "shmstore SharedByteStore"

    def start(self):
        import shmstore

        self._store = shmstore.SharedByteStore()
        return self._store

    def stop(self):
        self._store.close()

    @staticmethod
    def connect(handle):
        return handle

    def footprint(self):
        prefix = self._store._paths.segment_prefix.lstrip("/")
        segments = sum(
            allocated(os.path.join("/dev/shm", e))
            for e in os.listdir("/dev/shm")
            if e.startswith(prefix)
        )
        return rss_anon(self._store.manager_pid) + segments

    def server_pid(self):
        return self._store.manager_pid

    @staticmethod
    def disconnect(client):
        client.close()  # not the owner: disconnects, and removes its staging segments


class InMemoryPeer(Peer):
    name = "InMemoryByteStore (one process)"
    shared = False

    @staticmethod
    def connect(handle):
        from langchain_core.stores import InMemoryByteStore

        return InMemoryByteStore()


class _DictProxyClient:
    """``Manager().dict()`` as users use it: update() for a batch, one get() per key."""

    def __init__(self, proxy):
        self._proxy = proxy

    def mset(self, pairs):
        self._proxy.update(pairs)

    def mget(self, keys):
        get = self._proxy.get
        return [get(k) for k in keys]


class ManagerDictPeer(Peer):
    name = "multiprocessing.Manager().dict()"

    def start(self):
        self._manager = multiprocessing.get_context("spawn").Manager()
        return self._manager.dict()

    def stop(self):
        self._manager.shutdown()

    @staticmethod
    def connect(handle):
        return _DictProxyClient(handle)

    def footprint(self):
        return rss_anon(self._manager._process.pid)

    def server_pid(self):
        return self._manager._process.pid


class _BatchedTable:
    """The object a BaseManager serves: one pickled call per batch."""

    def __init__(self):
        self._data = {}

    def mset(self, pairs):
        self._data.update(pairs)

    def mget(self, keys):
        get = self._data.get
        return [get(k) for k in keys]


_TABLE = None


def _the_table():
    global _TABLE
    if _TABLE is None:
        _TABLE = _BatchedTable()
    return _TABLE


class _BatchedManager(BaseManager):
    pass


_BatchedManager.register("table", callable=_the_table)


class BatchedBaseManagerPeer(Peer):
    name = "BaseManager, batched methods"

    def start(self):
        self._manager = _BatchedManager(ctx=multiprocessing.get_context("spawn"))
        self._manager.start()
        return self._manager.address, bytes(self._manager._authkey)

    def stop(self):
        self._manager.shutdown()

    def footprint(self):
        return rss_anon(self._manager._process.pid)

    def server_pid(self):
        return self._manager._process.pid

    @staticmethod
    def connect(handle):
        address, authkey = handle
        manager = _BatchedManager(address=address, authkey=authkey)
        manager.connect()
        return manager.table()


class _RedisClient:
    def __init__(self, path):
        import redis

        self._redis = redis.Redis(unix_socket_path=path)

    def mset(self, pairs):
        self._redis.mset(dict(pairs))

    def mget(self, keys):
        return self._redis.mget(keys)


class RedisPeer(Peer):
    """Debian's redis-server on a unix socket, no persistence; redis-py with hiredis."""

    name = "Redis, unix socket (redis-py + hiredis)"

    @classmethod
    def unavailable(cls):
        if shutil.which("redis-server") is None:
            return "redis-server is not installed (apt-get install redis-server)"
        try:
            import hiredis  # noqa: F401
            import redis  # noqa: F401
        except ImportError:
            return "redis-py and hiredis are not installed (pip install redis hiredis)"
        return None

    def start(self):
        import redis

        self._dir = tempfile.mkdtemp(prefix="bench-redis-")
        path = os.path.join(self._dir, "redis.sock")
        self._server = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                path,
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(unix_socket_path=path)
        deadline = time.monotonic() + 10
        while True:  # the server's readiness is only observable by asking it
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)
        client.close()
        return path

    def stop(self):
        self._server.terminate()
        self._server.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    @staticmethod
    def connect(handle):
        return _RedisClient(handle)

    def footprint(self):
        return rss_anon(self._server.pid)

    def server_pid(self):
        return self._server.pid


class _LmdbClient:
    def __init__(self, path):
        import lmdb

        self._env = lmdb.open(path, map_size=4 << 30, max_readers=64, lock=True)

    def mset(self, pairs):
        with self._env.begin(write=True) as txn:
            for key, value in pairs:
                txn.put(key.encode(), value)

    def mget(self, keys):
        with self._env.begin(buffers=False) as txn:
            return [txn.get(key.encode()) for key in keys]


class _DirectoryPeer(Peer):
    """A store kept in a fresh directory on /dev/shm, opened by each worker with
    ``client(directory)``; ``module`` is the package it needs."""

    module: str
    client: Any

    @classmethod
    def unavailable(cls):
        try:
            importlib.import_module(cls.module)
        except ImportError:
            return f"{cls.module} is not installed (pip install {cls.module})"
        return None

    def start(self):
        self._dir = tempfile.mkdtemp(prefix=f"bench-{self.module}-", dir="/dev/shm")
        return self._dir

    def stop(self):
        shutil.rmtree(self._dir, ignore_errors=True)

    @classmethod
    def connect(cls, handle):
        return cls.client(handle)

    def footprint(self):
        return allocated(self._dir)


class LmdbPeer(_DirectoryPeer):
    """LMDB on /dev/shm, one environment per process, a transaction per batch."""

    name = "LMDB on /dev/shm"
    module = "lmdb"
    client = _LmdbClient

    def start(self):
        directory = super().start()
        _LmdbClient(directory)._env.close()  # the environment exists before any worker
        return directory


class _DiskCacheClient:
    def __init__(self, path):
        import diskcache

        self._cache = diskcache.Cache(path)

    def mset(self, pairs):
        with self._cache.transact():
            for key, value in pairs:
                self._cache.set(key, value)

    def mget(self, keys):
        get = self._cache.get
        return [get(key) for key in keys]


class DiskCachePeer(_DirectoryPeer):
    """diskcache (SQLite) on /dev/shm, a transaction per batch."""

    name = "diskcache on /dev/shm"
    module = "diskcache"
    client = _DiskCacheClient


PEERS: list[type[Peer]] = [
    ShmStorePeer,
    RedisPeer,
    LmdbPeer,
    DiskCachePeer,
    BatchedBaseManagerPeer,
    ManagerDictPeer,
    InMemoryPeer,
]


Rounds = dict[str, list[dict[str, float]]]


def medians(rounds: Rounds) -> dict[str, dict[str, float]]:
    """Each kind's median of each of its figures over its rounds."""
    return {k: {m: statistics.median(f[m] for f in v) for m in v[0]} for k, v in rounds.items()}


def print_table(
    med: dict[str, dict[str, float]],
    kinds: list[str],
    ratio: Callable[[str, list[float]], float],
    ratio_name: str,
    digits: int = 1,
) -> None:
    """A markdown table of ``med`` (from :func:`medians`): a row a figure, a column a
    kind, then ``ratio(figure, row)``."""
    print("| figure | " + " | ".join(kinds) + f" | {ratio_name} |")
    print("|---" * (len(kinds) + 2) + "|")
    for m in med[kinds[0]]:
        row = [med[k][m] for k in kinds]
        cells = " | ".join(f"{x:,.{digits}f}" for x in row)
        print(f"| {m} | {cells} | {ratio(m, row):.2f} |")


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A :class:`RedisPeer` for the block, its socket's path; exits the program with
    the reason if Redis is not installed."""
    missing = RedisPeer.unavailable()
    if missing:
        raise SystemExit(missing)
    server = RedisPeer()
    path = server.start()
    try:
        yield path
    finally:
        server.stop()
