"""Snapshots: round trips on every data path and both implementations, with awkward
keys, values of every size and deadlines; every kind of damaged file refused with
nothing started; SIGKILL of the manager midway through a save at several moments; a
save while four processes write, checked to be one moment; periodic and closing
saves."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import struct
import threading
import zlib

import pytest

import shmstore
from shmstore import _snapshot
from tests import _workers

SIZES = [0, 1, 7, 8, 1535, 1536, 70_000, 3 << 20]


def _contents(store) -> list[tuple[str, bytes]]:
    keys = list(store.yield_keys())
    return list(zip(keys, store.mget(keys), strict=True))


def _fill(store, seed: int = 0) -> None:
    rng = random.Random(seed)
    keys = list(dict.fromkeys([*_workers.AWKWARD_KEYS, *(f"k{i}" for i in range(500))]))
    store.mset([(k, rng.randbytes(rng.choice(SIZES[:6]))) for k in keys])
    store.mset([(f"big{n}", rng.randbytes(n)) for n in SIZES])
    store.mset([("long-lived", b"stays")], ttl_s=3600)
    store.mdelete(["k3", "k4"])
    store.mset([("k3", b"back, so listed last")])


def test_a_round_trip_keeps_every_entry_its_order_and_its_deadline(
    tmp_path, data_path, implementation
):
    path = tmp_path / "store.snap"
    with shmstore.SharedByteStore() as store:
        _fill(store)
        # Long enough to outlast the save and the next start on a loaded machine.
        store.mset([("short-lived", b"goes")], ttl_s=3)
        before = _contents(store)
        assert store.save(path) == len(before)
    with shmstore.SharedByteStore(snapshot=path) as loaded:
        assert _contents(loaded) == before
        # The deadline came through (on the wall clock): the entry still expires.
        assert _workers.eventually(lambda: loaded.mget(["short-lived"]) == [None], 10)
        assert loaded.mget(["long-lived"]) == [b"stays"]


def test_a_missing_file_starts_empty_and_the_owners_close_saves_it(tmp_path):
    path = tmp_path / "new.snap"
    with shmstore.SharedStore(snapshot=path) as store:
        assert list(store.yield_keys()) == []
        store.mset([("a", {"x": [1, 2]}), ("b", None)])
    assert path.exists()
    with shmstore.SharedStore(snapshot=path) as again:
        assert again.mget(["a", "b"]) == [{"x": [1, 2]}, None]
        assert list(again.yield_keys()) == ["a", "b"]


def test_stop_from_another_process_saves_first(tmp_path):
    path = tmp_path / "stopped.snap"
    store = shmstore.SharedByteStore(snapshot=path)
    try:
        store.mset([("k", b"v")])
        shmstore.SharedByteStore.attach(store.name).stop()
        with pytest.raises(shmstore.StoreConnectionError):
            store.mset([("k", b"too late")])
    finally:
        store.close()
    with shmstore.SharedByteStore(snapshot=path) as loaded:
        assert loaded.mget(["k"]) == [b"v"]


def test_periodic_saves(tmp_path):
    path = tmp_path / "every.snap"
    with shmstore.SharedByteStore(snapshot=path, snapshot_every_s=0.05) as store:
        store.mset([("k", b"v")])
        assert _workers.eventually(lambda: _keys_in(path) == 1, 10)
        store.mset([("j", b"w")])
        assert _workers.eventually(lambda: _keys_in(path) == 2, 10)


def _keys_in(path) -> int:
    try:
        return sum(len(batch) for batch in _snapshot.load(str(path)))
    except (FileNotFoundError, shmstore.SnapshotError):
        return -1


def test_bad_snapshot_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="snapshot_every_s"):
        shmstore.SharedByteStore(snapshot_every_s=5)
    with pytest.raises(ValueError, match="snapshot_every_s"):
        shmstore.SharedByteStore(snapshot=tmp_path / "x", snapshot_every_s=0)
    with (
        shmstore.SharedByteStore() as store,
        pytest.raises(shmstore.StoreError, match="cannot write"),
    ):
        store.save(tmp_path / "no-such-directory" / "x.snap")


def _good_file(tmp_path) -> bytes:
    path = tmp_path / "good.snap"
    with shmstore.SharedByteStore() as store:
        store.mset([(f"k{i}", bytes([i]) * 300) for i in range(50)])
        store.save(path)
    return path.read_bytes()


def _other_version(data: bytes) -> bytes:
    head = bytearray(data[:32])
    struct.pack_into("<I", head, 8, 99)
    struct.pack_into("<I", head, 24, zlib.crc32(bytes(head[:24])))
    return bytes(head) + data[32:]


def _flip(at: int):
    return lambda data: data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


DAMAGE = {
    "empty": (lambda data: b"", "not a shmstore snapshot"),
    "another format": (lambda data: b"PK\x03\x04" + data[4:], "not a shmstore snapshot"),
    "another version": (_other_version, "format 99"),
    "header flipped": (_flip(17), "header is damaged"),
    "cut after the header": (lambda data: data[:40], "truncated"),
    "cut midway": (lambda data: data[: len(data) // 2], "truncated"),
    "cut by one byte": (lambda data: data[:-1], "truncated"),
    "a value flipped": (_flip(100), "checksum"),
    "a length flipped": (_flip(32), "damaged"),
    "bytes appended": (lambda data: data + b"\0" * 8, "truncated"),
}


@pytest.mark.parametrize("damage", list(DAMAGE), ids=list(DAMAGE))
def test_a_damaged_file_is_refused_by_name_and_nothing_starts(tmp_path, damage):
    change, message = DAMAGE[damage]
    path = tmp_path / "bad.snap"
    path.write_bytes(change(_good_file(tmp_path)))
    with pytest.raises(shmstore.SnapshotError, match=message) as caught:
        shmstore.SharedByteStore(snapshot=path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, shmstore.StoreError)
    # The leak check shows that no manager, socket or segment was left behind.


@pytest.mark.parametrize("moment", [0.0, 0.3, 0.9])
def test_sigkill_midway_through_a_save_leaves_the_previous_snapshot_whole(tmp_path, moment):
    """The manager is killed once its temporary file has reached ``moment`` of the
    final size (0: as soon as it exists)."""
    path = tmp_path / "kept.snap"
    store = shmstore.SharedByteStore()
    try:
        store.mset([("old", b"snapshot")])
        store.save(path)
        previous = path.read_bytes()
        value = os.urandom(1 << 20)
        for start in range(0, 300, 20):
            store.mset([(f"v{i}", value) for i in range(start, start + 20)])
        final = 300 << 20
        temporary = f"{path}.tmp-{store.manager_pid}"
        failed = []
        saver = threading.Thread(target=_save_expecting_death, args=(store, path, failed))
        saver.start()
        assert _workers.eventually(
            lambda: os.path.exists(temporary)
            and os.path.getsize(temporary) >= moment * final,
            30,
        )
        os.kill(store.manager_pid, signal.SIGKILL)
        saver.join()
        assert failed == [True]
    finally:
        store.close()
    assert path.read_bytes() == previous
    with shmstore.SharedByteStore(snapshot=path) as loaded:
        assert _contents(loaded) == [("old", b"snapshot")]
        loaded.save(path)  # the next save removes the dead one's temporary file
    assert not os.path.exists(temporary)


def _save_expecting_death(store, path, failed) -> None:
    try:
        store.save(path)
    except shmstore.StoreConnectionError:
        failed.append(True)


def test_a_save_while_four_processes_write_is_one_moment(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with shmstore.SharedByteStore() as store:
        ready, stop = ctx.Semaphore(0), ctx.Event()
        writers = [
            ctx.Process(target=_workers.write_group_versions, args=(store, g, ready, stop))
            for g in range(4)
        ]
        for writer in writers:
            writer.start()
        for _ in writers:
            ready.acquire()
        try:
            for n in range(5):
                path = tmp_path / f"moment{n}.snap"
                store.save(path)
                entries = [
                    (bytes(k), bytes(v), e)
                    for batch in _snapshot.load(str(path))
                    for k, v, e in batch
                ]
                groups: dict[str, set[bytes]] = {}
                for key, value, _ in entries:
                    groups.setdefault(key.split(b":")[0].decode(), set()).add(value.split(b"|")[1])
                # Each group's 64 keys are at one version: no batch was cut in two.
                assert all(len(versions) == 1 for versions in groups.values()), groups
                # And each group written so far is whole: all 64 of its keys.
                assert len(entries) == 64 * len(groups)
        finally:
            stop.set()
            for writer in writers:
                writer.join()
        assert all(w.exitcode == 0 for w in writers)
