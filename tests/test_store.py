"""The proxy's own promises: input checking, errors, lifecycle, ownership, access."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import os
import pickle
import stat
import subprocess
import sys
import textwrap

import pytest

import shmstore
from shmstore import _protocol
from shmstore._client import Client
from shmstore._runtime import StorePaths
from tests import _workers

# -- bad input: a clear error naming the item, and nothing of the batch applied -------


@pytest.mark.parametrize(
    ("call", "error", "position"),
    [
        (lambda s: s.mget(["a", 1]), shmstore.InvalidKeyError, "position 1"),
        (lambda s: s.mdelete([b"a"]), shmstore.InvalidKeyError, "position 0"),
        (lambda s: s.mset([("a", b"1"), (None, b"2")]), shmstore.InvalidKeyError, "position 1"),
        (
            lambda s: s.mset([("a", b"1"), ("b", b"2"), "c"]),
            shmstore.InvalidBatchError,
            "position 2",
        ),
        (lambda s: s.mset([("a", b"1"), ("b", "text")]), shmstore.InvalidValueError, "position 1"),
        (lambda s: s.mset([("a", b"1"), ("b", None)]), shmstore.InvalidValueError, "position 1"),
        (lambda s: list(s.yield_keys(prefix=b"a")), shmstore.InvalidKeyError, "prefix"),
    ],
)
def test_bad_byte_store_input_is_refused_whole(byte_store, call, error, position):
    with pytest.raises(error, match=position) as raised:
        call(byte_store)
    assert isinstance(raised.value, TypeError)
    assert byte_store.mget(["a", "b"]) == [None, None]


@pytest.mark.parametrize(
    "bad_value",
    [(1, 2), {1, 2}, 2**64, object(), [1, (2,)], {"k": {"n": (1,)}}],
    ids=["tuple", "set", "int-too-large", "object", "nested-tuple", "deep-tuple"],
)
def test_shared_store_refuses_values_that_would_not_round_trip(bad_value):
    with shmstore.SharedStore() as store:
        with pytest.raises(shmstore.InvalidValueError, match="position 1"):
            store.mset([("a", 1), ("b", bad_value)])
        assert store.mget(["a", "b"]) == [None, None]


def test_byte_store_accepts_bytes_like_values_and_returns_bytes(byte_store):
    byte_store.mset([("a", bytearray(b"ba")), ("b", memoryview(b"mv")), ("c", b"")])
    assert byte_store.mget(["a", "b", "c"]) == [b"ba", b"mv", b""]


class _Key(str):
    pass


def test_batches_of_every_shape_are_stored_as_given(byte_store):
    # A list of (str, bytes) tuples takes the compiled path; these take the general one.
    Pair = collections.namedtuple("Pair", "key value")

    def shapes():
        return [
            [["list", b"1"]],
            [Pair("namedtuple", b"2")],
            ((k, v) for k, v in [("generator", b"3")]),
            [(_Key("str-subclass"), b"4")],
            [("bytearray", bytearray(b"5")), ("bytes", b"6")],
            [("mixed", b"7"), ["mixed", b"8"]],
        ]

    names = ["plain", "list", "namedtuple", "generator", "str-subclass", "bytearray"]
    with shmstore.SharedByteStore.attach(byte_store.name) as attached:
        for proxy in (byte_store, attached):  # an attached proxy learns its path late
            proxy.mset([("plain", b"0")])
            for pairs in shapes():
                proxy.mset(pairs)
            got = proxy.mget([*names, "bytes", "mixed"])
            assert got == [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"8"]
            proxy.mdelete(list(proxy.yield_keys()))


# -- limits: each named in its error, each enforced before anything is applied -------

LIMITS = {"max_value_bytes": 1000, "max_batch_bytes": 3000, "max_store_bytes": 5000}


@pytest.fixture
def limited_store():
    with shmstore.SharedByteStore(**LIMITS) as store:
        yield store


@pytest.mark.parametrize(
    ("pairs", "error", "named"),
    [
        ([("a", b"x"), ("b", b"x" * 1001)], shmstore.ValueTooLargeError, "max_value_bytes"),
        (
            [("a", b"x" * 1000), ("b", b"x" * 1000), ("c", b"x" * 1000)],
            shmstore.BatchTooLargeError,
            "max_batch_bytes",
        ),
    ],
    ids=["value", "batch"],
)
def test_value_and_batch_limits_refuse_the_whole_batch(limited_store, pairs, error, named):
    with pytest.raises(error, match=named):
        limited_store.mset(pairs)
    assert limited_store.mget([k for k, _ in pairs]) == [None] * len(pairs)


def test_store_limit_counts_keys_and_values_and_lets_overwrites_replace(limited_store):
    limited_store.mset([(f"k{i}", b"x" * 900) for i in range(3)])  # 2,706 bytes
    limited_store.mset([(f"k{i}", b"x" * 900) for i in range(3, 5)])  # 4,510 bytes
    with pytest.raises(shmstore.StoreTooLargeError, match="max_store_bytes"):
        limited_store.mset([("k5", b"x" * 900)])
    assert limited_store.mget(["k5"]) == [None]
    limited_store.mset([("k0", b"y" * 900)])  # same size: the store does not grow
    limited_store.mdelete(["k1"])
    limited_store.mset([("k5", b"z" * 900)])
    assert limited_store.mget(["k0", "k1", "k5"]) == [b"y" * 900, None, b"z" * 900]


def test_manager_enforces_limits_a_client_did_not_check(limited_store):
    # A request that skipped the proxy's own check, as a buggy or hostile peer's would.
    frame = _protocol.pack([_protocol.MSET, ["a", "b"], [b"x", b"x" * 1001], None])
    with pytest.raises(shmstore.ValueTooLargeError, match="max_value_bytes"):
        limited_store._client.request(frame)
    assert limited_store.mget(["a", "b"]) == [None, None]


def test_attached_proxy_learns_the_limits_from_the_store(limited_store):
    with shmstore.SharedByteStore.attach(limited_store.name) as other:
        assert other.limits._asdict() == LIMITS
        with pytest.raises(shmstore.ValueTooLargeError):
            other.mset([("big", b"x" * 1001)])


@pytest.mark.parametrize("option", list(LIMITS))
@pytest.mark.parametrize("bad", [0, -1, 1.5, "1"])
def test_limits_must_be_positive_ints(option, bad):
    with pytest.raises(ValueError, match=option):
        shmstore.SharedByteStore(**{option: bad})


def test_large_values_round_trip(byte_store):
    big = os.urandom(8 << 20)
    byte_store.mset([("big", big), ("small", b"s")])
    assert byte_store.mget(["big", "small", "big"]) == [big, b"s", big]


@pytest.mark.parametrize(
    "error",
    [
        shmstore.StoreError("m"),
        shmstore.InvalidKeyError("m"),
        shmstore.InvalidValueError("m"),
        shmstore.InvalidBatchError("m"),
        shmstore.LimitExceededError("m"),
        shmstore.StoreConnectionError("m"),
        shmstore.StoreClosedError("m"),
        shmstore.StoreNotFoundError("m"),
        shmstore.StorePermissionError("m"),
        shmstore.StoreFullError("m"),
        shmstore.ValueTooLargeError("m"),
        shmstore.BatchTooLargeError("m"),
        shmstore.StoreTooLargeError("m"),
        shmstore.ProtocolError("m"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_pickle_and_are_store_errors(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == "m"
    assert isinstance(copy, shmstore.StoreError)


# -- closing and ownership ------------------------------------------------------------


def test_owner_close_stops_the_manager_and_removes_its_files():
    store = shmstore.SharedByteStore()
    other = shmstore.SharedByteStore.attach(store.name)
    manager_pid = store.manager_pid
    store.close()
    store.close()  # idempotent
    assert _workers.wait_for_exit(manager_pid, timeout_s=0)  # stopped and reaped by close()
    assert os.listdir(store.runtime_dir) == []
    with pytest.raises(shmstore.StoreClosedError):
        store.mget(["k"])
    with pytest.raises(shmstore.StoreClosedError):
        store.mget([])  # even a batch that needs no request
    with pytest.raises(shmstore.StoreConnectionError):
        other.mget(["k"])
    other.close()


def test_non_owner_close_only_disconnects(byte_store):
    byte_store.mset([("k", b"v")])
    with shmstore.SharedByteStore.attach(byte_store.name) as other:
        assert other.manager_pid is None
        assert other.mget(["k"]) == [b"v"]
    with pytest.raises(ConnectionError):
        other.mget(["k"])
    assert byte_store.mget(["k"]) == [b"v"]


def test_owner_that_drops_its_store_stops_the_manager():
    store = shmstore.SharedByteStore()
    manager_pid = store.manager_pid
    del store
    gc.collect()
    assert _workers.wait_for_exit(manager_pid, timeout_s=0)


def test_attach_to_a_missing_store_raises_not_found():
    with pytest.raises(shmstore.StoreNotFoundError, match="no-such-store"):
        shmstore.SharedByteStore.attach("no-such-store")


def test_a_running_store_name_cannot_be_taken_twice(byte_store):
    with pytest.raises(shmstore.StoreError, match="already exists"):
        shmstore.SharedByteStore(name=byte_store.name)
    assert byte_store.mget(["k"]) == [None]


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "-leading", "x" * 65, "sp ace"])
def test_invalid_names_are_refused(name):
    with pytest.raises(ValueError, match="store name"):
        shmstore.SharedByteStore(name=name)


def test_unpickled_proxy_reaches_the_same_store(store_cls):
    with store_cls() as store:
        copy = pickle.loads(pickle.dumps(store))
        assert copy is not store and copy.manager_pid is None
        store.mset([("k", b"v" if store_cls is shmstore.SharedByteStore else "v")])
        assert copy.mget(["k"]) == store.mget(["k"])
        copy.close()


def test_pickle_carries_no_authkey(byte_store):
    key = StorePaths(byte_store.runtime_dir, byte_store.name).read_key()
    assert key not in pickle.dumps(byte_store)


# -- access: the same user only -------------------------------------------------------


def test_files_are_private_to_the_user(byte_store):
    paths = StorePaths(byte_store.runtime_dir, byte_store.name)
    assert stat.S_IMODE(os.stat(byte_store.runtime_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths.socket).st_mode) == 0o600


def test_runtime_dir_open_to_others_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(shmstore.StorePermissionError, match="mode 777"):
        shmstore.SharedByteStore(runtime_dir=str(shared))


def test_attach_refuses_a_runtime_dir_open_to_others(byte_store):
    # Another user who could write there could have planted the socket.
    os.chmod(byte_store.runtime_dir, 0o777)
    try:
        with pytest.raises(shmstore.StorePermissionError, match="mode 777"):
            shmstore.SharedByteStore.attach(byte_store.name)
    finally:
        os.chmod(byte_store.runtime_dir, 0o700)


def test_client_without_the_authkey_is_refused_and_others_are_served(byte_store):
    byte_store.mset([("k", b"v")])
    intruder = Client(StorePaths(byte_store.runtime_dir, byte_store.name), b"x" * 32)
    with pytest.raises(shmstore.StorePermissionError):
        intruder.connect()
    intruder.close()
    assert byte_store.mget(["k"]) == [b"v"]


# -- interruption and concurrency -----------------------------------------------------


def test_interrupt_between_send_and_reply_discards_the_connection(byte_store, monkeypatch):
    byte_store.mset([("a", b"A"), ("b", b"B")])  # connected
    connection = byte_store._client._connection

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(connection, "recv_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        list(byte_store.yield_keys(prefix="a"))  # sent; its reply is never read
    # The reply to the interrupted request is still in the old socket; a reused
    # connection would return ["a"] here.
    assert list(byte_store.yield_keys(prefix="b")) == ["b"]
    assert byte_store._client._connection is not connection


def test_threads_share_one_proxy(byte_store):
    def work(t: int) -> bool:
        keys = [f"t{t}:{i}" for i in range(16)]
        for r in range(50):
            byte_store.mset([(k, f"{k}:{r}".encode()) for k in keys])
            if byte_store.mget(keys) != [f"{k}:{r}".encode() for k in keys]:
                return False
        return True

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(work, range(8)))


def test_a_read_after_an_mset_returns_sees_all_of_it(byte_store, data_path):
    # The manager replies to a batch before indexing it (before writing its entries,
    # too, unless they are staged); a read that starts after the reply must still find
    # the whole batch. 4,000 keys take long enough to apply that a quick read not made
    # to wait would find the previous round's.
    keys = [f"k{i}" for i in range(4000)]
    for round_ in range(20):
        value = b"%d" % round_
        byte_store.mset([(k, value) for k in keys])
        assert byte_store.mget([keys[0], keys[-1]]) == [value, value], round_
    assert byte_store.mget(keys) == [value] * len(keys)


class _CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    submitted = 0

    def submit(self, *args, **kwargs):
        type(self).submitted += 1
        return super().submit(*args, **kwargs)


@pytest.mark.parametrize(("direct", "hops"), [(True, 3), (False, 4)], ids=["direct", "manager"])
async def test_async_calls_hop_to_a_thread_once_per_call_not_per_key(monkeypatch, direct, hops):
    # amget reads shared memory in the caller's thread; only requests hop.
    monkeypatch.setenv("SHMSTORE_DIRECT_READS", "1" if direct else "0")
    with shmstore.SharedByteStore() as byte_store:
        await _hop_once_per_call(byte_store, hops)


async def _hop_once_per_call(byte_store, hops):
    _CountingExecutor.submitted = 0
    executor = _CountingExecutor(1)
    asyncio.get_running_loop().set_default_executor(executor)
    await byte_store.amset([(f"k{i}", b"v") for i in range(100)])
    keys = [key async for key in byte_store.ayield_keys(prefix="k")]
    values = await byte_store.amget(keys)
    await byte_store.amdelete(keys)
    executor.shutdown()
    assert len(keys) == 100 and values == [b"v"] * 100
    assert _CountingExecutor.submitted == hops


def test_keys_listed_in_insertion_order_as_of_one_moment(byte_store):
    byte_store.mset([("b", b"1"), ("a", b"2"), ("c", b"3")])
    keys = byte_store.yield_keys()
    assert next(keys) == "b"
    byte_store.mdelete(["a"])  # the listing was fetched whole when iteration began
    assert list(keys) == ["a", "c"]


def test_many_threads_connect_while_a_slow_handshake_is_pending(byte_store):
    # A peer that opens the socket and says nothing must not hold up the others.
    import socket

    silent = socket.socket(socket.AF_UNIX)
    silent.connect(StorePaths(byte_store.runtime_dir, byte_store.name).socket)
    try:
        with shmstore.SharedByteStore.attach(byte_store.name) as other:
            other.mset([("k", b"v")])
            assert byte_store.mget(["k"]) == [b"v"]
    finally:
        silent.close()


def test_the_manager_process_imports_no_more_than_it_needs():
    # Its interpreter's memory is part of every store's footprint (README: memory at
    # 200,000 values); these modules cost it about 1.5 MB and the manager uses none.
    banned = {"typing", "hashlib", "_hashlib", "langchain_core", "shmstore._store"}
    code = f"import sys, shmstore._manager; print(sorted(set(sys.modules) & {banned!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_works_without_langchain_installed():
    code = textwrap.dedent(
        """
        import sys

        class NoLangChain:  # as if langchain-core were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "langchain_core":
                    raise ImportError(f"no module named {name!r}")

        sys.meta_path.insert(0, NoLangChain())
        import shmstore
        from shmstore._basestore import BaseStore

        with shmstore.SharedStore() as store, shmstore.SharedByteStore() as byte_store:
            store.mset([("k", [1, "x"])])
            byte_store.mset([("k", b"v")])
            assert store.mget(["k", "missing"]) == [[1, "x"], None]
            assert byte_store.mget(["k"]) == [b"v"]
            assert isinstance(store, BaseStore) and list(store.yield_keys()) == ["k"]
        assert "langchain_core" not in sys.modules
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.timeout(10)
def test_direct_read_never_waits_behind_another_threads_request(byte_store):
    byte_store.mset([("k", b"v")])
    byte_store.mget(["k"])  # segments mapped
    with byte_store._client._lock:  # as while another thread's long mset is in flight
        assert byte_store.mget(["k"]) == [b"v"]


def test_proxy_follows_a_store_restarted_under_the_same_name():
    first = shmstore.SharedByteStore(name="restarted", max_value_bytes=10)
    first.mset([("k", b"old")])
    proxy = shmstore.SharedByteStore.attach("restarted")
    assert proxy.mget(["k"]) == [b"old"]
    assert list(proxy.yield_keys()) == ["k"]  # a request: the proxy is connected
    assert proxy.limits.max_value_bytes == 10
    first.close()
    with pytest.raises(shmstore.StoreConnectionError):
        proxy.mget(["k"])
    with shmstore.SharedByteStore(name="restarted", max_value_bytes=20) as second:
        second.mset([("k", b"new"), ("k2", b"")])
        # The first request after the restart reaches the new store, not the old
        # manager's closed connection.
        assert list(proxy.yield_keys()) == ["k", "k2"]
        # Never the old store's memory, nor its limits.
        assert proxy.mget(["k"]) == [b"new"]
        assert proxy.limits.max_value_bytes == 20
    proxy.close()


def test_the_manager_reserves_arena_pages_ahead_of_need_while_idle():
    # So that the next batches find their pages reserved rather than wait for the
    # kernel to clear them.
    from shmstore._arena import RESERVE_AHEAD

    with shmstore.SharedByteStore() as store:
        store.mset([("k", b"v" * 10_000)])
        arena = store._paths.segment_prefix.lstrip("/") + "a"
        assert _workers.eventually(
            lambda: _workers.shm_bytes(arena) >= RESERVE_AHEAD + 10_000, within_s=10
        )
        assert _workers.shm_bytes(arena) < RESERVE_AHEAD + (1 << 20)  # and no further
