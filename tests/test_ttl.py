"""Time to live: deadlines on CLOCK_MONOTONIC, a miss for every process once passed,
never listed, the space reclaimed by the next write that needs it and by the
manager's sweep of an idle store. Waits are for the clock to pass a deadline, or for
a condition with a deadline (``eventually``), never a sleep taken as a promise."""

from __future__ import annotations

import math
import multiprocessing
import time

import pytest

import shmstore
from tests import _workers


def _wait_past(deadline: float) -> None:
    """Return once ``time.monotonic()`` is past ``deadline``: the condition itself."""
    while time.monotonic() <= deadline:
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.001)


def test_expired_entries_are_misses_in_every_process_and_never_listed(
    data_path, implementation
):
    with shmstore.SharedByteStore() as store:
        store.mset([("short", b"s"), ("also", b"a")], ttl_s=0.2)
        start = time.monotonic()  # after the reply: the deadline was set before it
        store.mset([("long", b"l")], ttl_s=3600)
        store.mset([("forever", b"f")])
        assert store.mget(["long", "forever"]) == [b"l", b"f"]
        _wait_past(start + 0.2)
        assert store.mget(["short", "also", "long", "forever"]) == [None, None, b"l", b"f"]
        assert list(store.yield_keys()) == ["long", "forever"]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(1) as pool:
            seen = pool.apply(_workers.read_keys, (store, ["short", "also", "long"]))
        assert seen == [None, None, b"l"]


def test_store_default_ttl_and_per_batch_override():
    with shmstore.SharedByteStore(ttl_s=0.2) as store:
        store.mset([("default", b"d")])
        start = time.monotonic()
        store.mset([("kept", b"k")], ttl_s=None)
        store.mset([("longer", b"x")], ttl_s=3600)
        _wait_past(start + 0.2)
        assert store.mget(["default", "kept", "longer"]) == [None, b"k", b"x"]


def test_reads_do_not_extend_a_deadline():
    with shmstore.SharedByteStore() as store:
        store.mset([("k", b"v")], ttl_s=0.3)
        start = time.monotonic()
        while time.monotonic() < start + 0.25:
            store.mget(["k"])  # hits, or misses once late: either way no extension
        _wait_past(start + 0.3)
        assert store.mget(["k"]) == [None]


def test_an_expired_key_written_again_is_a_new_key():
    with shmstore.SharedByteStore() as store:
        store.mset([("a", b"1")], ttl_s=0.1)
        start = time.monotonic()
        store.mset([("b", b"2")])
        _wait_past(start + 0.1)
        store.mset([("a", b"3")])
        assert list(store.yield_keys()) == ["b", "a"]  # listed in its new place
        assert store.mget(["a"]) == [b"3"]


def test_an_expired_entry_makes_room_for_the_next_write():
    with shmstore.SharedByteStore(max_store_bytes=10_000) as store:
        store.mset([(f"old{i}", b"x" * 990) for i in range(10)], ttl_s=0.2)
        start = time.monotonic()
        with pytest.raises(shmstore.StoreTooLargeError):
            store.mset([("new", b"y" * 5000)])
        _wait_past(start + 0.2)
        store.mset([("new", b"y" * 5000)])  # reclaims the expired ones, in its window
        stats = store.stats()
        assert store.mget(["new"]) == [b"y" * 5000]
        assert stats.keys == 1 and stats.bytes == 5003
        assert stats.expirations == 10 and stats.evictions == 0


def test_an_idle_store_reclaims_expired_entries(implementation):
    with shmstore.SharedByteStore() as store:
        store.mset([(f"k{i}", b"v" * 100) for i in range(500)], ttl_s=0.2)
        store.mset([("stays", b"s")])
        # Nothing more is written: the manager's sweeper must reclaim them itself.
        assert _workers.eventually(lambda: store.stats().keys == 1, within_s=10)
        stats = store.stats()
        assert stats.expirations == 500 and stats.bytes == len("stays") + 1


def test_expired_space_is_reused(implementation):
    with shmstore.SharedByteStore() as store:
        prefix = store._paths.segment_prefix
        for _ in range(5):
            store.mset([(f"k{i}", b"v" * 4000) for i in range(200)], ttl_s=0.05)
            start = time.monotonic()
            _wait_past(start + 0.05)
            assert _workers.eventually(lambda: store.stats().keys == 0, within_s=10)
        # 5 rounds of 800 kB each in the space of about one: the blocks were reused.
        assert _workers.shm_bytes(prefix + "a") < 3 << 20


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "1", True])
def test_bad_ttl_is_refused_before_anything_is_sent(bad):
    with shmstore.SharedByteStore() as store:
        with pytest.raises(ValueError, match="ttl_s"):
            store.mset([("k", b"v")], ttl_s=bad)
        assert store.mget(["k"]) == [None]
    with pytest.raises(ValueError, match="ttl_s"):
        shmstore.SharedByteStore(ttl_s=bad)


async def test_amset_takes_a_ttl_too():
    with shmstore.SharedByteStore() as store:
        await store.amset([("k", b"v")], ttl_s=0.1)
        start = time.monotonic()
        _wait_past(start + 0.1)
        assert await store.amget(["k"]) == [None]
