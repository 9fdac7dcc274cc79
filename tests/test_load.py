"""Load: hundreds of connections at once, and a soak of mixed operations from many
processes checked exactly against every acknowledged write."""

from __future__ import annotations

import multiprocessing

import pytest

import shmstore
from tests import _workers

_ctx = multiprocessing.get_context("spawn")


def test_200_connections_from_16_processes(byte_store):
    processes, per_process = 16, 13  # 208 connections
    byte_store.mset([("owner", b"connected")])  # the owner's own connection is in the baseline
    baseline = _workers.manager_sockets(byte_store)
    ready, release = _ctx.SimpleQueue(), _ctx.Event()
    holders = [
        _ctx.Process(
            target=_workers.hold_connections, args=(byte_store.name, per_process, ready, release)
        )
        for _ in range(processes)
    ]
    for holder in holders:
        holder.start()
    pids = {ready.get() for _ in holders}
    try:
        assert len(pids) == processes
        held = _workers.manager_sockets(byte_store) - baseline
        # One socket per connection, and no more.
        assert processes * per_process <= held <= processes * per_process + 4
        byte_store.mset([("owner", b"served")])
        assert byte_store.mget(["owner"]) == [b"served"]
        assert len(list(byte_store.yield_keys())) == processes * per_process + 1
    finally:
        release.set()
        for holder in holders:
            holder.join()
        ready.close()
    assert all(holder.exitcode == 0 for holder in holders)
    assert _workers.eventually(
        lambda: _workers.manager_sockets(byte_store) == baseline, within_s=10
    )


def _soak(seconds: float, workers: int = 8) -> None:
    results = _ctx.SimpleQueue()
    with shmstore.SharedByteStore() as store:
        list(store.yield_keys())  # the owner's own connection is in the baseline
        baseline = _workers.manager_sockets(store)
        processes = [
            _ctx.Process(target=_workers.soak, args=(store, w, workers, seconds, results))
            for w in range(workers)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get() for _ in processes]
        for process in processes:
            process.join()
        results.close()
        assert all(process.exitcode == 0 for process in processes)
        expected: dict[str, int | None] = {}
        for own, operations, examples, violations in outcomes:
            assert violations == 0, examples
            assert operations > 0
            expected.update(own)
        # The final state is exactly what was acknowledged: no lost or resurrected write.
        keys = sorted(expected)
        got = [
            None if v is None else _workers.check_stress_value(k, v)
            for k, v in zip(keys, store.mget(keys), strict=True)
        ]
        assert got == [expected[k] for k in keys]
        assert set(store.yield_keys()) == {k for k, v in expected.items() if v is not None}
        # Bounded: churn reuses freed space, and every connection's descriptor is closed.
        assert _workers.rss_anon(store.manager_pid) < 256 << 20
        arena = store._paths.segment_prefix.lstrip("/") + "a"
        assert _workers.shm_bytes(arena) < 64 << 20
        assert _workers.eventually(lambda: _workers.manager_sockets(store) == baseline, within_s=10)


def test_soak_10_s():
    _soak(seconds=10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_60_s():
    _soak(seconds=60)
