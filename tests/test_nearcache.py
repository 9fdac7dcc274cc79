"""The near cache in front of a Redis store: reads from local shared memory, fills
that never keep a value older than an invalidation, invalidation across hosts (two
stores with near caches of their own, in separate processes), a flush and a lost
tracking connection emptying it, and its bound. The shared suites run a near-cached
store too (the ``redis-near`` backend)."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import redis

import shmstore
from shmstore import _tracking
from tests import _workers


def _namespace() -> str:
    return f"n{os.getpid()}.{time.monotonic_ns()}"


@pytest.fixture
def namespace():
    return _namespace()


@pytest.fixture
def near_store(redis_url, namespace):
    with shmstore.RedisByteStore(redis_url, namespace=namespace, near_cache_bytes=4 << 20) as s:
        yield s


def _server(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def _reads(server: redis.Redis) -> dict:
    """The server's count of each command a read could use."""
    stats = server.info("commandstats")
    commands = ("get", "mget", "evalsha", "eval")
    return {c: stats.get(f"cmdstat_{c}", {}).get("calls") for c in commands}


def _settle(store, url: str) -> None:
    """Wait until the server's reports of every write made so far have reached
    ``store``'s near cache. Redis sends the tracking connection its invalidations in the
    order of the writes, so once the report of a write made now has come (a marker key
    held in the near cache is dropped), every earlier write's has too."""
    near = store.near_cache
    marker = f"settle-marker-{time.monotonic_ns()}"  # never written before: no stale report

    def held() -> bool:
        near.fill([marker], [b"m"], 0, near.invalidation_seq())
        return near.get([marker]) == [b"m"]

    assert _workers.eventually(held, 10)
    with shmstore.RedisByteStore(url, namespace=store.namespace) as plain:
        plain.mset([(marker, b"m")])
        assert _workers.eventually(lambda: near.get([marker]) == [None], 10)
        plain.mdelete([marker])


def _read_until_held(store, url: str, keys: list[str]) -> None:
    """Read ``keys`` through ``store`` until its near cache holds them all, once the
    reports of earlier writes have arrived: a report still on its way would drop a copy
    filled after the write it reports (a fill is refused only if it read the server
    before the report came)."""
    _settle(store, url)
    near = store.near_cache
    assert _workers.eventually(
        lambda: None not in store.mget(keys) and None not in near.get(keys), 10
    )


def _tracking_client(url: str, store) -> dict | None:
    name = f"{_tracking.CLIENT_NAME}{store.near_cache.manager_pid}"
    with _server(url) as server:
        return next((c for c in server.client_list() if c["name"] == name), None)


def test_a_read_the_near_cache_holds_makes_no_request(near_store, redis_url, namespace):
    with shmstore.RedisByteStore(redis_url, namespace=namespace) as plain:
        plain.mset([("a", b"1"), ("b", b"2")])
    assert near_store.mget(["a", "b", "c"]) == [b"1", b"2", None]  # from the server
    _read_until_held(near_store, redis_url, ["a", "b"])
    stats = near_store.near_cache.stats()
    assert stats.keys == 2  # filled with what was found
    with _server(redis_url) as server:
        reads = _reads(server)
        assert near_store.mget(["b", "a", "b"]) == [b"2", b"1", b"2"]
        assert _reads(server) == reads  # no read reached the server
    after = near_store.near_cache.stats()
    assert after.hits - stats.hits == 3 and after.misses == stats.misses


def test_a_write_is_read_back_on_its_host_at_once(near_store, redis_url):
    near_store.mset([("k", b"old")])
    assert near_store.mget(["k"]) == [b"old"]
    _read_until_held(near_store, redis_url, ["k"])
    near_store.mset([("k", b"new")])
    assert near_store.near_cache.get(["k"]) == [None]  # the old copy is gone
    assert near_store.mget(["k"]) == [b"new"]
    near_store.mdelete(["k"])
    assert near_store.near_cache.get(["k"]) == [None]
    assert near_store.mget(["k"]) == [None]


def test_a_write_on_another_host_reaches_this_near_cache(near_store, redis_url, namespace):
    """Host B (a process with a near cache of its own) overwrites a key this host holds:
    B reads its own write at once, and this host within the stated bound."""
    near_store.mset([("k", b"v1")])
    assert near_store.mget(["k"]) == [b"v1"]
    _read_until_held(near_store, redis_url, ["k"])
    ctx = multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    host_b = ctx.Process(
        target=_workers.write_as_another_host,
        args=(redis_url, namespace, "k", b"v2", results),
    )
    host_b.start()
    _done, before, after = results.get()
    # The bound: the invalidation arrives, or the silent connection is declared lost
    # (and the near cache dropped) after a PING unanswered for timeout_s.
    bound_s = _tracking.PING_S + 5.0
    assert _workers.eventually(lambda: near_store.mget(["k"]) == [b"v2"], bound_s)
    host_b.join()
    results.close()
    assert (before, after, host_b.exitcode) == ([b"v1"], [b"v2"], 0)


def test_a_fill_that_read_the_server_before_an_invalidation_is_refused(
    near_store, redis_url, namespace
):
    near = near_store.near_cache
    seen = near.invalidation_seq()
    with shmstore.RedisByteStore(redis_url, namespace=namespace) as other_host:
        other_host.mset([("k", b"new")])
    # The server's push reaches the manager on its own thread: wait for its number.
    assert _workers.eventually(lambda: near.invalidation_seq() > seen, 10)
    near.fill(["k", "untouched"], [b"old", b"kept"], 0, seen)
    assert near.get(["k", "untouched"]) == [None, b"kept"]
    assert near_store.mget(["k"]) == [b"new"]  # from the server, then filled
    assert near.get(["k"]) == [b"new"]


def test_a_forged_or_forgotten_invalidation_number_fills_nothing(near_store):
    near = near_store.near_cache
    seq = near.invalidation_seq()
    near.fill(["k"], [b"v"], 0, seq + 1000)
    assert near.get(["k"]) == [None]


def test_the_near_cache_is_shared_by_the_processes_it_is_handed_to(near_store, redis_url):
    near_store.mset([("k", b"v")])
    _read_until_held(near_store, redis_url, ["k"])
    hits = near_store.near_cache.stats().hits
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_workers.read_keys, (near_store, ["k"])) == [b"v"]
    assert near_store.near_cache.stats().hits == hits + 1  # the worker's read, a hit


def test_a_killed_tracking_connection_empties_the_near_cache(near_store, redis_url):
    keys = [f"k{i}" for i in range(100)]
    near_store.mset([(k, b"v") for k in keys])
    _read_until_held(near_store, redis_url, keys)
    assert near_store.near_cache.stats().keys == 100
    client = _tracking_client(redis_url, near_store)
    assert client is not None and "t" in client["flags"] and "B" in client["flags"]
    with _server(redis_url) as server:
        server.client_kill_filter(_id=client["id"])
    assert _workers.eventually(lambda: near_store.near_cache.stats().keys == 0, 10)
    # It connects again, and fills resume once it has.
    def reconnected() -> bool:
        again = _tracking_client(redis_url, near_store)
        return again is not None and again["id"] != client["id"]

    assert _workers.eventually(reconnected, 10)
    assert _workers.eventually(
        lambda: near_store.mget(["k1"]) == [b"v"] and near_store.near_cache.stats().keys == 1, 10
    )


def test_a_flush_of_the_server_empties_the_near_cache(make_server):
    server = make_server("--appendonly", "no")
    url = f"unix://{server.path}"
    with shmstore.RedisByteStore(url, namespace="flush", near_cache_bytes=1 << 20) as store:
        store.mset([("a", b"1"), ("b", b"2")])
        _read_until_held(store, url, ["a", "b"])
        assert store.near_cache.stats().keys == 2
        with _server(url) as direct:
            direct.flushdb()
        assert _workers.eventually(lambda: store.near_cache.stats().keys == 0, 10)
        assert store.mget(["a", "b"]) == [None, None]


def test_a_server_that_went_away_drops_the_near_cache(make_server):
    server = make_server("--appendonly", "no")
    url = f"unix://{server.path}"
    options = {"near_cache_bytes": 1 << 20, "timeout_s": 1}
    with shmstore.RedisByteStore(url, namespace="gone", **options) as store:
        store.mset([("a", b"1")])
        _read_until_held(store, url, ["a"])
        assert store.near_cache.stats().keys == 1
        server.kill()
        assert _workers.eventually(lambda: store.near_cache.stats().keys == 0, 10)
        with pytest.raises(shmstore.StoreConnectionError):
            store.mget(["a"])  # a miss here, and the server is gone


def test_the_near_cache_holds_its_bound(near_store, redis_url):
    value = b"x" * 4096
    for start in range(0, 4000, 100):
        keys = [f"k{i}" for i in range(start, start + 100)]
        near_store.mset([(k, value) for k in keys])
        _read_until_held(near_store, redis_url, keys)
    stats = near_store.near_cache.stats()
    assert stats.bytes <= 4 << 20 and stats.evictions > 0
    assert near_store.mget(["k0", "k3999"]) == [value, value]  # the server has all


def test_a_copy_lives_no_longer_than_the_value_on_the_server(near_store):
    near_store.mset([("e", b"short")], ttl_s=0.2)
    near_store.mset([("f", b"long")])
    assert near_store.mget(["e", "f"]) == [b"short", b"long"]
    assert _workers.eventually(lambda: near_store.mget(["e"]) == [None], 10)
    assert near_store.mget(["f"]) == [b"long"]


def test_near_cache_options_are_checked(redis_url, tmp_path):
    for bad in (0, 1000, 1.5, "1MiB"):
        with pytest.raises(ValueError, match="near_cache_bytes"):
            shmstore.RedisByteStore(redis_url, namespace="x", near_cache_bytes=bad)
    with pytest.raises(shmstore.StoreConnectionError):
        shmstore.RedisByteStore(
            f"unix://{tmp_path}/none.sock", namespace="x", near_cache_bytes=1 << 20, timeout_s=1
        )


def test_the_invalidation_record_refuses_exactly_the_stale_fills():
    from shmstore import _layout as L
    from shmstore._invalidation import Invalidations

    header = memoryview(bytearray(L.HEADER_WORDS * 8)).cast("Q")
    record = Invalidations(header, keep=2)
    assert record.fresh(["a"], 0) == [False]  # not tracking yet
    record.tracking = True
    start = record.record_all()  # as when tracking comes up
    assert header[L.W_INVALIDATION_SEQ] == start
    assert record.fresh(["a"], start - 1) == [False]  # read before tracking was up
    a = record.record(["a"])
    assert record.fresh(["a", "b"], start) == [False, True]
    assert record.fresh(["a", "b"], a) == [True, True]
    record.record(["b"])
    record.record(["c"])  # "a" is forgotten: fills that read before its number are out
    assert record.fresh(["z"], a - 1) == [False] and record.fresh(["z"], a) == [True]
    assert record.fresh(["z"], record.seq + 1) == [False]  # a number not given yet
    record.tracking = False
    assert record.fresh(["z"], record.seq) == [False]


def test_a_plain_store_refuses_the_near_cache_requests(byte_store):
    from shmstore import _protocol as proto

    for request in ([proto.INVALIDATE, ["k"]], [proto.FILL, ["k"], [b"v"], 0, 0]):
        with (
            shmstore.SharedByteStore.attach(byte_store.name) as peer,
            pytest.raises(shmstore.ProtocolError, match="not a near cache"),
        ):
            peer._client.request(proto.pack(request))
    byte_store.mset([("k", b"v")])
    assert byte_store.mget(["k"]) == [b"v"]  # the store serves on
