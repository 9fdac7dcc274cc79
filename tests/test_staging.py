"""Large batches travel through staging segments (shmstore._staging): a proxy keeps two
for reuse, in turn, and must never reuse one while the manager could still be reading
it, or leave one behind."""

from __future__ import annotations

import os
import socket
import threading

import pytest

import shmstore
from shmstore import _staging
from tests import _workers

LARGE = 300_000  # over SHMSTORE_STAGE_BYTES: staged


def _segments_of(store, pid: int | None = None) -> list[str]:
    prefix = f"{store._paths.segment_prefix.lstrip('/')}s{pid or os.getpid()}."
    return sorted(e for e in os.listdir("/dev/shm") if e.startswith(prefix))


def _value(tag: str, size: int = LARGE) -> bytes:
    return (tag.encode() * (size // len(tag) + 1))[:size]


def test_large_batches_take_two_kept_segments_in_turn_which_close_removes(byte_store):
    seen = []
    for n in range(4):
        byte_store.mset([(f"k{n}", _value(f"v{n}")), ("last", _value(f"last{n}"))])
        seen.append(_segments_of(byte_store))
    assert len(seen[1]) == 2 and seen[1:] == [seen[1]] * 3  # the same two each time
    assert byte_store.mget(["k0", "k3", "last"]) == [_value("v0"), _value("v3"), _value("last3")]
    byte_store.close()
    assert _segments_of(byte_store) == []


def test_a_kept_segment_is_taken_again_only_after_a_later_reply(byte_store):
    stager = _staging.Stager(byte_store._paths.segment_prefix)
    try:
        names = []
        for _ in range(4):
            staged = stager.stage([_value("x")], LARGE, generation=1)
            names.append(staged.suffix)
            stager.done(staged, replied=True)
        assert names[0] == names[2] != names[1] == names[3]
        staged = stager.stage([_value("x")], LARGE, generation=1)
        stager.done(staged, replied=False)  # the manager may still read either
        assert _segments_of(byte_store) == []
        staged = stager.stage([_value("x")], LARGE, generation=1)
        assert staged.suffix not in names
        stager.done(staged, replied=True)
        staged = stager.stage([_value("x")], LARGE, generation=2)  # a new connection
        assert len(_segments_of(byte_store)) == 1  # the old connection's: removed
        stager.done(staged, replied=True)
    finally:
        stager.close()
    assert _segments_of(byte_store) == []


def test_the_staged_values_are_stored_whole_though_the_reply_comes_before_the_copy(byte_store):
    # The manager acknowledges a staged batch before copying it out, so the proxy's
    # next batch, staged the moment the reply is in, must go into the other segment.
    # Here that next batch is garbage staged at once and never sent: 15 MB in one copy,
    # which overtakes the manager's copying entry by entry.
    keys = [f"k{i}" for i in range(1000)]
    stager = byte_store._stager
    garbage = bytes(15_000 * len(keys))
    for round_ in range(5):
        values = [_value(f"{round_}:{key}:", 15_000) for key in keys]
        byte_store.mset(list(zip(keys, values, strict=True)))
        staged = stager.stage([garbage], len(garbage), byte_store._client.generation)
        stager.done(staged, replied=False)  # as if its request had failed: both dropped
        assert byte_store.mget(keys) == values


def test_a_batch_over_the_kept_size_gets_a_segment_removed_after_it(byte_store):
    big = _value("big", _staging.KEEP_BYTES + 1)
    byte_store.mset([("big", big)])
    assert _segments_of(byte_store) == []
    assert byte_store.mget(["big"]) == [big]


def test_kept_segment_is_replaced_after_a_request_without_reply(byte_store, monkeypatch):
    byte_store.mset([("a", _value("a"))])
    [first] = _segments_of(byte_store)
    client = byte_store._client
    request = client.request

    def sent_then_interrupted(frame, while_waiting=None):
        request(frame)  # the manager applies it, but the caller never sees the reply
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "request", sent_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        byte_store.mset([("b", _value("b"))])
    monkeypatch.undo()
    assert _segments_of(byte_store) == []  # removed: the manager might still be reading it
    byte_store.mset([("c", _value("c"))])
    [second] = _segments_of(byte_store)
    assert second != first
    assert byte_store.mget(["a", "b", "c"]) == [_value("a"), _value("b"), _value("c")]


def test_kept_segment_is_replaced_when_the_connection_is(byte_store):
    # The manager removes a process's segments when its last connection ends, so one
    # kept across a new connection may be gone.
    byte_store.mset([("a", _value("a"))])
    [first] = _segments_of(byte_store)
    byte_store._client._discard()  # as an interrupted call does
    assert _workers.eventually(lambda: not _segments_of(byte_store), within_s=5)
    byte_store.mset([("b", _value("b"))])
    assert _segments_of(byte_store) != [first]
    assert byte_store.mget(["a", "b"]) == [_value("a"), _value("b")]


def test_a_connection_being_made_keeps_the_process_segments(byte_store):
    # A proxy that replaces its connection stages its next batch as soon as its side of
    # the handshake is done; the end of its old connection must not remove that segment
    # as the last of the process's while the new one is still being set up.
    byte_store.mset([("a", _value("a"))])
    [kept] = _segments_of(byte_store)
    before = _workers.manager_sockets(byte_store)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as pending:
        pending.connect(byte_store._paths.socket)  # accepted; never authenticates
        assert _workers.eventually(
            lambda: _workers.manager_sockets(byte_store) == before + 1, within_s=5
        )
        byte_store._client._discard()
        # The manager closes a connection's socket only once its end is dealt with.
        assert _workers.eventually(
            lambda: _workers.manager_sockets(byte_store) == before, within_s=5
        )
        assert _segments_of(byte_store) == [kept]
    # With the pending connection gone too, the process has none left.
    assert _workers.eventually(lambda: not _segments_of(byte_store), within_s=5)
    byte_store.mset([("b", _value("b"))])
    assert byte_store.mget(["a", "b"]) == [_value("a"), _value("b")]


def test_threads_staging_at_once_never_share_a_segment(byte_store):
    rounds, wrong = 30, []

    def write(tag: str) -> None:
        for n in range(rounds):
            pairs = [(f"{tag}:{i}", _value(f"{tag}{n}.{i}", 100_000)) for i in range(4)]
            byte_store.mset(pairs)
            if byte_store.mget([k for k, _ in pairs]) != [v for _, v in pairs]:
                wrong.append((tag, n))

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(_segments_of(byte_store)) <= 2  # only the kept ones outlive their batch


def test_forked_child_stages_into_its_own_segment(byte_store):
    byte_store.mset([("parent", _value("p0"))])  # the parent now keeps a segment
    [parents] = _segments_of(byte_store)
    child_values, exitcode, child_pid = _workers.run_in_child(
        "fork", _workers.stage_twice_and_report, byte_store
    )
    assert exitcode == 0
    assert child_values == [_value("c1")]
    assert _segments_of(byte_store) == [parents]  # untouched, still the parent's
    assert _segments_of(byte_store, child_pid) == []  # the child's, removed at its close
    byte_store.mset([("parent", _value("p1"))])
    assert byte_store.mget(["parent", "child"]) == [_value("p1"), _value("c1")]


def test_closing_while_a_batch_is_staged_removes_the_segment_when_it_is_done(byte_store):
    stager = _staging.Stager(byte_store._paths.segment_prefix)
    staged = stager.stage([_value("x")], LARGE, generation=1)
    assert staged.kept and _segments_of(byte_store) == [staged.segment.name.lstrip("/")]
    stager.close()  # another thread closes the proxy mid-request: the segment is in use
    assert len(_segments_of(byte_store)) == 1
    stager.done(staged, replied=True)
    assert _segments_of(byte_store) == []


def test_a_batch_without_room_to_stage_goes_over_the_socket(byte_store, monkeypatch):
    def full(*_args):
        raise shmstore.StoreFullError("shared memory is full")

    monkeypatch.setattr(byte_store._stager, "stage", full)
    byte_store.mset([("a", _value("a"))])  # the manager may still have room
    assert byte_store.mget(["a"]) == [_value("a")]
    assert _segments_of(byte_store) == []


def test_an_error_reply_keeps_the_kept_segments():
    with shmstore.SharedByteStore(max_store_bytes=1 << 20) as store:
        store.mset([("a", _value("a", 600_000))])
        store.mset([("a", _value("b", 600_000))])
        kept = _segments_of(store)
        assert len(kept) == 2
        with pytest.raises(shmstore.StoreTooLargeError):
            store.mset([("c", _value("c", 600_000))])  # the manager refuses it
        assert _segments_of(store) == kept  # it answered: it is done with them
        store.mset([("a", _value("d", 600_000))])
        assert store.mget(["a", "c"]) == [_value("d", 600_000), None]
