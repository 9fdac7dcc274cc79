"""The stores a user would pick instead of shmstore, behind one small interface.

Each peer is started in the benchmark's main process (:meth:`Peer.start` returns a
picklable handle) and used from worker processes through :meth:`Peer.connect`, which
returns a client with ``mset(pairs)`` and ``mget(keys)``, each one batch, used the way
that peer's users would batch. Add a peer by subclassing :class:`Peer` and listing it
in :data:`PEERS`.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.managers import BaseManager
from typing import Any


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

    @staticmethod
    def connect(handle):
        address, authkey = handle
        manager = _BatchedManager(address=address, authkey=authkey)
        manager.connect()
        return manager.table()


PEERS: list[type[Peer]] = [ShmStorePeer, BatchedBaseManagerPeer, ManagerDictPeer, InMemoryPeer]
