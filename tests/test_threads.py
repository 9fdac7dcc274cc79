"""One proxy shared by the threads of a process, as asyncio apps, executors and servers
share it: while the index grows under them and while the store closes, every thread
gets right values or a StoreError, never a foreign exception or a false miss."""

from __future__ import annotations

import multiprocessing
import threading

import shmstore
from tests import _workers

THREADS = 8


def _keys(n: int, tag: str = "k") -> list[str]:
    return [f"{tag}{i}" for i in range(n)]


def test_threads_of_a_spawned_worker_while_the_index_grows_and_the_owner_closes(implementation):
    ctx = multiprocessing.get_context("spawn")
    ready, results = ctx.Event(), ctx.SimpleQueue()
    keys = _keys(512)
    store = shmstore.SharedByteStore()
    try:
        store.mset([(k, k.encode()) for k in keys])
        worker = ctx.Process(
            target=_workers.read_from_threads, args=(store, keys, THREADS, ready, results)
        )
        worker.start()
        assert ready.wait(60)
        # Fresh keys make the index rebuild several times under the readers.
        fresh = _keys(40_000, "fresh")
        for i in range(0, len(fresh), 1000):
            store.mset([(k, b"x") for k in fresh[i : i + 1000]])
    finally:
        store.close()
    ended, wrong = results.get()
    worker.join(60)
    results.close()
    assert worker.exitcode == 0
    assert wrong == 0, "a thread missed a key or read a wrong value"
    assert sum(ended.values()) == THREADS
    assert set(ended) <= {"StoreConnectionError", "StoreNotFoundError"}, ended


def test_threads_of_the_owner_while_it_closes_its_store(byte_store):
    keys = _keys(256)
    byte_store.mset([(k, k.encode()) for k in keys])
    outcomes: list[str] = []
    go = threading.Barrier(THREADS + 1)

    def run(offset: int) -> None:
        batch = keys[offset::THREADS]
        go.wait()
        try:
            while True:
                assert byte_store.mget(batch) == [k.encode() for k in batch]
        except shmstore.StoreError as exc:
            outcomes.append(type(exc).__name__)
        except BaseException as exc:  # anything else is the failure this test is for
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    go.wait()
    byte_store.mset([(f"more{i}", b"v") for i in range(5000)])  # while they read
    byte_store.close()
    for thread in threads:
        thread.join(60)
    assert set(outcomes) <= {"StoreClosedError", "StoreConnectionError"}, outcomes
    assert len(outcomes) == THREADS
