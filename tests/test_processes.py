"""Every way a proxy reaches another process, and what happens when a process dies."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor

import pytest

import shmstore
from tests import _workers

START_METHODS = ["fork", "spawn", "forkserver"]


def _expected(worker: int) -> list[bytes | None]:
    keys = [f"w{worker}:{i}" for i in range(20)]
    return [*(_workers.value_for(k) for k in keys), b"owner"]


def _check_all_workers_wrote(store, workers: range) -> None:
    keys = [f"w{w}:{i}" for w in workers for i in range(20)]
    assert store.mget(keys) == [_workers.value_for(k) for k in keys]


@pytest.mark.parametrize("method", START_METHODS)
def test_process_pool_executor_tasks_share_the_store(byte_store, method):
    byte_store.mset([("from-owner", b"owner")])
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        results = list(pool.map(_workers.write_and_read, [byte_store] * 8, range(8)))
    assert results == [_expected(w) for w in range(8)]
    _check_all_workers_wrote(byte_store, range(8))


@pytest.mark.parametrize("method", START_METHODS)
def test_multiprocessing_pool_initializer_hands_over_the_store(byte_store, method):
    byte_store.mset([("from-owner", b"owner")])
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2, initializer=_workers.init_worker, initargs=(byte_store,)) as pool:
        results = pool.map(_workers.task_with_initializer_store, range(6))
    assert results == [_expected(w) for w in range(6)]
    _check_all_workers_wrote(byte_store, range(6))


def test_pool_worker_reuses_one_proxy_for_every_task(byte_store):
    # A store passed with every task is unpickled once per task; the worker must keep
    # one connection, not open one per task.
    byte_store.mset([("k", b"v")])
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pids_and_counts = list(pool.map(_workers.pid_and_key_count, [byte_store] * 5))
        pid = pids_and_counts[0][0]
        open_sockets = pool.submit(_workers.count_sockets).result()
    assert pids_and_counts == [(pid, 1)] * 5
    assert open_sockets == 1


def test_joblib_loky_workers_share_the_store(byte_store):
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky import get_reusable_executor

    byte_store.mset([("from-owner", b"owner")])
    try:
        results = joblib.Parallel(n_jobs=2, backend="loky")(
            joblib.delayed(_workers.write_and_read)(byte_store, w) for w in range(6)
        )
    finally:
        get_reusable_executor().shutdown(wait=True)
    assert results == [_expected(w) for w in range(6)]
    _check_all_workers_wrote(byte_store, range(6))


def test_unrelated_interpreter_attaches_by_name(byte_store):
    byte_store.mset([("from-owner", b"owner")])
    code = textwrap.dedent(
        """
        import sys, shmstore
        with shmstore.SharedByteStore.attach(sys.argv[1]) as store:
            store.mset([("from-attached", b"attached")])
            print(store.mget(["from-owner"])[0].decode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, byte_store.name],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "owner"
    assert byte_store.mget(["from-attached"]) == [b"attached"]


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_proxy_used_by_parent_and_child_at_once_never_crosses_replies(byte_store, method):
    # The parent's proxy is connected before the child exists; under fork the child
    # inherits that very connection and must open its own.
    byte_store.mget(["connect-now"])
    ctx = multiprocessing.get_context(method)
    results = ctx.SimpleQueue()
    child = ctx.Process(target=_workers.hammer_in_child, args=(byte_store, "child", 400, results))
    child.start()
    parent_wrong = _workers.hammer(byte_store, "parent", 400)
    child_wrong = results.get()
    child.join()
    results.close()
    assert (parent_wrong, child_wrong, child.exitcode) == (0, 0, 0)


def test_forked_child_of_the_owner_is_not_an_owner(byte_store):
    byte_store.mset([("k", b"v")])
    manager_pid_in_child, exitcode, _ = _workers.run_in_child(
        "fork", _workers.report_role_then_close, byte_store
    )
    assert exitcode == 0
    assert manager_pid_in_child is None
    # the child's close() only disconnected it
    assert byte_store.mget(["k"]) == [b"v"]


def test_concurrent_reader_sees_each_mset_whole_or_not_at_all(byte_store):
    reads, mixed, versions_seen = _workers.reader_against_writer(byte_store, 300)
    assert mixed == 0
    assert reads > 0 and versions_seen > 1  # the reader really overlapped the writer


def test_owner_killed_stops_manager_and_removes_its_files(store_cls):
    ctx = multiprocessing.get_context("spawn")
    info, stop = ctx.SimpleQueue(), ctx.Event()
    owner = ctx.Process(target=_workers.own_a_store, args=(store_cls.__name__, info, stop))
    owner.start()
    name, manager_pid = info.get()
    proxy = store_cls.attach(name)
    assert proxy.mget(["owned"]) in ([b"yes"], ["yes"])
    os.kill(owner.pid, signal.SIGKILL)
    owner.join()
    info.close()
    assert _workers.wait_for_exit(manager_pid, timeout_s=10)
    assert os.listdir(os.environ["SHMSTORE_RUNTIME_DIR"]) == []
    with pytest.raises(shmstore.StoreConnectionError):
        proxy.mget(["owned"])
    proxy.close()
    with pytest.raises(shmstore.StoreNotFoundError):
        store_cls.attach(name)


def test_manager_killed_every_proxy_raises_connection_error(byte_store):
    byte_store.mset([("k", b"v")])
    connected = shmstore.SharedByteStore.attach(byte_store.name)
    assert connected.mget(["k"]) == [b"v"]
    os.kill(byte_store.manager_pid, signal.SIGKILL)
    assert _workers.wait_for_exit(byte_store.manager_pid, timeout_s=10)
    for proxy in (byte_store, connected):
        with pytest.raises(shmstore.StoreConnectionError):
            proxy.mget(["k"])
        # and on every call after that, not just once
        with pytest.raises(shmstore.StoreConnectionError):
            proxy.mset([("k", b"v2")])
    connected.close()


def test_owner_can_start_a_store_of_the_same_name_after_its_manager_was_killed():
    first = shmstore.SharedByteStore(name="reused-name")
    first.mset([("k", b"first")])
    os.kill(first.manager_pid, signal.SIGKILL)
    assert _workers.wait_for_exit(first.manager_pid, timeout_s=10)
    with shmstore.SharedByteStore(name="reused-name") as second:
        first.close()  # the old owner's clean-up must not remove the new store's files
        assert second.mget(["k"]) == [None]
        assert shmstore.SharedByteStore.attach("reused-name").mget(["k"]) == [None]
