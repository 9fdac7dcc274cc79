"""The Redis stores beyond the shared suites (which run them through the ``backend``
fixture): URLs and ``connect``, refused options, atomicity seen from other processes,
time to live, pickling without the password, fork safety, and a dead, absent or
password-protected server."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time

import pytest

import shmstore
from tests import _workers


@pytest.fixture
def redis_store(redis_url):
    with shmstore.RedisByteStore(redis_url, namespace=f"r{os.getpid()}.{time.monotonic_ns()}") as s:
        yield s


def test_connect_gives_the_store_a_url_names(redis_url):
    with shmstore.connect(f"{redis_url}?namespace=via-url") as store:
        assert isinstance(store, shmstore.RedisByteStore) and store.namespace == "via-url"
        store.mset([("k", b"v")])
    with shmstore.RedisByteStore(redis_url, namespace="via-url") as same:
        assert same.mget(["k"]) == [b"v"]
    with shmstore.SharedByteStore() as local:
        local.mset([("k", b"local")])
        with shmstore.connect(f"shm://{local.name}") as attached:
            assert attached.mget(["k"]) == [b"local"]


@pytest.mark.parametrize(
    "url", ["redis://localhost/0", "http://x", "shm://", "unix:///tmp/x.sock?namespace=a&namespace=b"]
)
def test_connect_refuses_urls_it_cannot_place(url):
    with pytest.raises(ValueError):
        shmstore.connect(url)


@pytest.mark.parametrize(
    "option, value",
    [("segment_bytes", 1 << 20), ("max_store_bytes", 10), ("eviction_policy", "sieve")],
)
def test_options_of_the_shared_memory_stores_are_refused_with_a_reason(redis_url, option, value):
    with pytest.raises(ValueError, match=f"{option} does not apply to a Redis store"):
        shmstore.RedisByteStore(redis_url, namespace="x", **{option: value})


@pytest.mark.parametrize("namespace", ["", "a{b", "c}", None])
def test_a_namespace_that_would_break_the_hash_tag_is_refused(redis_url, namespace):
    with pytest.raises(ValueError, match="namespace"):
        shmstore.RedisByteStore(redis_url, namespace=namespace)


def test_every_key_of_a_store_shares_one_hash_tag(redis_store, redis_url):
    import redis

    redis_store.mset([("a", b"1"), ("b:{x}", b"2")], ttl_s=60)
    client = redis.Redis.from_url(redis_url)
    try:
        names = [k for k in client.scan_iter(match=f"shmstore:{{{redis_store.namespace}}}:*")]
        assert len(names) == 4  # two values, the order and the counter
        assert all(n.startswith(f"shmstore:{{{redis_store.namespace}}}:".encode()) for n in names)
    finally:
        client.close()


@pytest.mark.parametrize("server", ["server", "cluster"])
def test_a_reader_in_another_process_sees_each_mset_whole(request, server):
    if server == "cluster":
        url, options = request.getfixturevalue("redis_cluster"), {"cluster": True}
    else:
        url, options = request.getfixturevalue("redis_url"), {}
    namespace = f"atomic{os.getpid()}.{time.monotonic_ns()}"
    with shmstore.RedisByteStore(url, namespace=namespace, **options) as store:
        reads, mixed, versions_seen = _workers.reader_against_writer(store, 200)
    assert mixed == 0 and reads > 0 and versions_seen > 1


def test_stores_spread_over_a_cluster_each_in_one_slot(redis_cluster):
    import redis.cluster

    namespaces = [f"spread{i}" for i in range(12)]
    stores = [
        shmstore.connect(f"{redis_cluster}?namespace={ns}&cluster=true") for ns in namespaces
    ]
    try:
        owners = set()
        for store in stores:
            store.mset([("a", b"1"), ("b", b"2")], ttl_s=60)
            store.mdelete(["a"])
            assert store.mget(["a", "b"]) == [None, b"2"]
            assert list(store.yield_keys()) == ["b"]
            owners.add(store._client.get_node_from_key(f"shmstore:{{{store.namespace}}}:o").name)
        assert len(owners) > 1  # the namespaces landed on several masters
        client = redis.cluster.RedisCluster.from_url(redis_cluster)
        try:
            for ns in namespaces:  # every key of one store in one slot
                names = client.keys(f"shmstore:{{{ns}}}:*", target_nodes="all")
                assert len(names) == 3 and len({client.keyslot(n) for n in names}) == 1
        finally:
            client.close()
            for node in client.get_nodes():  # which close() leaves connected
                node.redis_connection.connection_pool.disconnect()
    finally:
        for store in stores:
            store.close()


def test_a_near_cache_on_a_cluster_is_refused_with_a_reason(redis_cluster):
    with pytest.raises(ValueError, match="Cluster"):
        shmstore.RedisByteStore(
            redis_cluster, namespace="n", cluster=True, near_cache_bytes=1 << 20
        )


def test_time_to_live_on_the_server(redis_store):
    redis_store.mset([("short", b"s")], ttl_s=0.2)
    redis_store.mset([("long", b"l")], ttl_s=3600)
    assert _workers.eventually(lambda: redis_store.mget(["short"]) == [None], within_s=10)
    assert list(redis_store.yield_keys()) == ["long"]
    redis_store.mset([("short", b"again")])  # a new key: listed last
    assert list(redis_store.yield_keys()) == ["long", "short"]


def test_a_default_ttl_and_bad_ttls(redis_url):
    with shmstore.RedisByteStore(redis_url, namespace="ttl-default", ttl_s=0.1) as store:
        store.mset([("d", b"1")])
        store.mset([("kept", b"2")], ttl_s=None)
        assert _workers.eventually(lambda: store.mget(["d"]) == [None], within_s=10)
        assert store.mget(["kept"]) == [b"2"]
        with pytest.raises(ValueError, match="ttl_s"):
            store.mset([("k", b"v")], ttl_s=0)


def test_a_pickle_carries_no_password_and_a_spawned_worker_uses_it(redis_store):
    redis_store.mset([("k", b"v")])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_workers.read_keys, (redis_store, ["k"])) == [b"v"]
    handle = pickle.dumps(redis_store)
    assert redis_store.namespace.encode() in handle and len(handle) < 1000


def test_a_forked_child_uses_connections_of_its_own(redis_store):
    redis_store.mset([("k", b"parent")])
    seen, exitcode, _ = _workers.run_in_child("fork", _workers.write_and_report, redis_store)
    assert (seen, exitcode) == ([b"child"], 0)
    assert redis_store.mget(["k"]) == [b"child"]  # the parent's connection still works


def test_an_absent_server_is_a_prompt_connection_error(tmp_path):
    store = shmstore.RedisByteStore(f"unix://{tmp_path}/none.sock", namespace="x", timeout_s=1)
    try:
        with pytest.raises(shmstore.StoreConnectionError):
            store.mget(["k"])
        with pytest.raises(shmstore.StoreConnectionError):
            store.mset([("k", b"v")])
    finally:
        store.close()


@pytest.fixture
def private_server(make_server):
    """A private server with a password."""
    server = make_server("--appendonly", "no", "--requirepass", "secret")
    return server, server.path


def test_password_wrong_right_and_never_pickled(private_server, monkeypatch):
    server, path = private_server
    wrong = shmstore.RedisByteStore(f"unix://:wrong@{path}", namespace="pw")
    with wrong, pytest.raises(shmstore.StorePermissionError):
        wrong.mget(["k"])
    with shmstore.RedisByteStore(f"unix://:secret@{path}", namespace="pw") as store:
        store.mset([("k", b"v")])
        assert "secret" not in store.url
        data = pickle.dumps(store)
        assert b"secret" not in data
        monkeypatch.delenv(shmstore._redis.PASSWORD_ENV, raising=False)
        with pytest.raises(shmstore.StorePermissionError, match="REDISCLI_AUTH"):
            pickle.loads(data)
        monkeypatch.setenv(shmstore._redis.PASSWORD_ENV, "secret")
        with pickle.loads(data) as copy:
            assert copy.mget(["k"]) == [b"v"]
        server.kill()  # the server dies: the next call fails promptly, it never hangs
        with pytest.raises(shmstore.StoreConnectionError):
            store.mget(["k"])


def test_a_server_killed_mid_mset_keeps_each_batch_whole_or_absent(make_server):
    """With an append-only file, fsynced at every write: a SIGKILL between or during
    batches, then a restart on the same files, leaves each group of keys at one
    version (the last batch in the file whole, or absent)."""
    server = make_server("--appendonly", "yes", "--appendfsync", "always")
    ctx = multiprocessing.get_context("spawn")
    keys = [f"g:{i}" for i in range(64)]
    url = f"unix://{server.path}"
    with shmstore.RedisByteStore(url, namespace="crash") as store:
        progress = ctx.SimpleQueue()
        writer = ctx.Process(target=_workers.write_versions_forever, args=(store, keys, progress))
        writer.start()
        for _ in range(20):
            progress.get()  # some batches are in
        server.kill()
        writer.join(30)
        assert writer.exitcode == 1  # it saw the server die: StoreConnectionError
        server.start()
        values = store.mget(keys)  # the same proxy reconnects to the restarted server
        versions = {v.split(b"|")[1] for v in values if v is not None}
        assert len(versions) == 1 and None not in values, versions
        assert list(store.yield_keys()) == keys


def test_a_restarted_server_is_reached_again(make_server):
    server = make_server("--appendonly", "no")
    with shmstore.RedisByteStore(f"unix://{server.path}", namespace="restart") as store:
        store.mset([("k", b"v")])
        server.kill()
        with pytest.raises(shmstore.StoreConnectionError):
            store.mget(["k"])
        server.start()
        assert store.mget(["k"]) == [None]  # no persistence: a new, empty server
        store.mset([("k", b"again")])
        assert store.mget(["k"]) == [b"again"]
