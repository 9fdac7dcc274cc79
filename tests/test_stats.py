"""Statistics: counted in every process and on every data path, added up without a
request, and kept when the processes that counted them are gone."""

from __future__ import annotations

import multiprocessing

import pytest

import shmstore
from tests import _workers


def test_hits_and_misses_add_up_across_processes(data_path, implementation):
    ctx = multiprocessing.get_context("spawn")
    with shmstore.SharedByteStore() as store:
        store.mset([(f"k{i}", b"v") for i in range(50)])
        with ctx.Pool(3) as pool:
            asked = pool.starmap(_workers.read_some, [(store, seed) for seed in range(6)])
        own = store.mget([f"k{i}" for i in range(100)])  # 50 hits, 50 misses
        stats = store.stats()
        assert stats.hits == sum(h for h, _ in asked) + 50
        assert stats.misses == sum(m for _, m in asked) + 50
        assert stats.hits + stats.misses == sum(h + m for h, m in asked) + len(own)
        assert 0 < stats.hit_ratio < 1


def test_writes_deletes_keys_and_bytes_are_counted():
    with shmstore.SharedByteStore(max_store_bytes=1 << 20) as store:
        store.mset([("a", b"12345"), ("b", b"x"), ("a", b"123")])
        store.mdelete(["b", "missing"])
        stats = store.stats()
        assert stats == shmstore.StoreStats(
            keys=1,
            bytes=len("a") + 3,
            max_bytes=1 << 20,
            hits=0,
            misses=0,
            evictions=0,
            expirations=0,
            sets=3,
            deletes=1,
        )
        assert stats.hit_ratio == 0.0


def test_stats_need_no_request_and_reach_attached_processes():
    with shmstore.SharedByteStore() as store:
        store.mset([("k", b"v")])
        store.mget(["k", "nope"])
        attached = shmstore.SharedByteStore.attach(store.name, runtime_dir=store.runtime_dir)
        try:

            def no_requests(frame):
                raise AssertionError("stats() made a request")

            attached._client.request = no_requests
            stats = attached.stats()
            assert (stats.keys, stats.hits, stats.misses, stats.sets) == (1, 1, 1, 1)
        finally:
            attached.close()


def test_a_closed_proxys_counts_are_kept_and_its_slot_reused():
    with shmstore.SharedByteStore() as store:
        store.mset([("k", b"v")])
        for _ in range(3):
            proxy = shmstore.SharedByteStore.attach(store.name, runtime_dir=store.runtime_dir)
            assert proxy.mget(["k", "x"]) == [b"v", None]
            proxy.close()
        assert _workers.eventually(
            lambda: store.stats()[3:5] == (3, 3), within_s=10
        ), store.stats()


def test_stats_of_a_stopped_store_raise():
    store = shmstore.SharedByteStore()
    attached = shmstore.SharedByteStore.attach(store.name, runtime_dir=store.runtime_dir)
    try:
        store.close()
        with pytest.raises(shmstore.StoreNotFoundError):
            attached.stats()
    finally:
        attached.close()
    with pytest.raises(shmstore.StoreClosedError):
        store.stats()
