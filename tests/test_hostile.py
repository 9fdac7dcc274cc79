"""Hostile and malformed input from a peer that passed the authkey challenge: it loses
its connection, nothing it sent is applied, the manager's memory stays bounded, and
every other client goes on as before. Frames kept in fuzz_corpus/ are replayed every
run; add any new case the fuzzers find there."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from multiprocessing.connection import Client as connect
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmstore
from shmstore._protocol import parse_reply, parse_request
from shmstore._runtime import StorePaths

CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").glob("*.bin"))

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 9)), inner, max_size=3),
    ),
    max_leaves=12,
)
# Request-shaped documents reach the checks behind the opcode, not just the decoder.
_requests = st.one_of(
    _documents,
    st.builds(lambda op, rest: [op, *rest], st.integers(-2, 8), st.lists(_documents, max_size=4)),
)
_frames = st.one_of(
    st.binary(max_size=96), _requests.map(lambda d: msgpack.packb(d, use_bin_type=True))
)


def _peer(store):
    """An authenticated connection of our own, to send whatever we like."""
    paths = StorePaths(store.runtime_dir, store.name)
    return connect(paths.socket, family="AF_UNIX", authkey=paths.read_key())


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def _assert_still_serving(store) -> None:
    store.mset([("canary", b"alive")])
    assert store.mget(["canary"]) == [b"alive"]
    assert set(store.yield_keys()) == {"canary"}  # nothing hostile was applied


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_frames)
def test_decoder_accepts_a_request_or_raises_protocol_error(frame):
    try:
        op, args = parse_request(frame)
    except shmstore.ProtocolError:
        return
    assert isinstance(op, int) and isinstance(args, list)


@settings(max_examples=1000, deadline=None)
@given(_frames)
def test_reply_decoder_raises_only_store_errors(frame):
    with contextlib.suppress(shmstore.StoreError):
        parse_reply(frame)


@pytest.mark.parametrize("frame_path", CORPUS, ids=lambda p: p.stem)
def test_corpus_frame_raises_nothing_but_store_errors_in_either_decoder(frame_path):
    # A few are well-formed requests that only the manager refuses (another peer's
    # staging segment): the live test below covers those.
    frame = frame_path.read_bytes()
    with contextlib.suppress(shmstore.ProtocolError):
        parse_request(frame)
    with contextlib.suppress(shmstore.StoreError):
        parse_reply(frame)


@pytest.mark.parametrize("frame_path", CORPUS, ids=lambda p: p.stem)
def test_corpus_frame_costs_the_peer_its_connection_only(byte_store, frame_path):
    frame = frame_path.read_bytes()
    peer = _peer(byte_store)
    try:
        peer.send_bytes(frame)
        with pytest.raises(shmstore.ProtocolError):
            parse_reply(peer.recv_bytes())
        with pytest.raises((EOFError, ConnectionResetError)):
            peer.recv_bytes()  # the manager hung up on it
    finally:
        peer.close()
    _assert_still_serving(byte_store)


@pytest.mark.parametrize(
    "header",
    [struct.pack("!i", 0x7FFFFFFF), struct.pack("!iQ", -1, 1 << 62)],
    ids=["2GiB", "2^62"],
)
def test_huge_length_prefix_is_refused_without_allocating(byte_store, header):
    rss_before = _rss_anon(byte_store.manager_pid)
    peer = _peer(byte_store)
    try:
        os.write(peer.fileno(), header + b"x" * 100)
        # Hung up on: EOF, or a reset because our bytes were left unread.
        with pytest.raises((EOFError, ConnectionResetError)):
            peer.recv_bytes()
    finally:
        peer.close()
    _assert_still_serving(byte_store)
    assert _rss_anon(byte_store.manager_pid) - rss_before < 16 << 20


def test_frame_cut_off_midway_applies_nothing(byte_store):
    frame = msgpack.packb([2, ["half"], [b"x" * 1000], None], use_bin_type=True)
    peer = _peer(byte_store)
    os.write(peer.fileno(), struct.pack("!i", len(frame)) + frame[: len(frame) // 2])
    peer.close()  # as a killed client would
    _assert_still_serving(byte_store)
    assert byte_store.mget(["half"]) == [None]


def test_peer_that_never_authenticates_blocks_nobody(byte_store):
    silent = [socket.socket(socket.AF_UNIX) for _ in range(20)]
    try:
        for sock in silent:
            sock.connect(StorePaths(byte_store.runtime_dir, byte_store.name).socket)
        with shmstore.SharedByteStore.attach(byte_store.name) as other:
            other.mset([("k", b"v")])
        assert byte_store.mget(["k"]) == [b"v"]
    finally:
        for sock in silent:
            sock.close()


@pytest.mark.timeout(60)
def test_peer_that_never_reads_its_replies_blocks_nobody(byte_store):
    # The manager acknowledges a small mset with the table locked; a peer that leaves
    # its replies unread fills its socket, and the acknowledgment must not then wait
    # there, holding up every other client.
    peer = _peer(byte_store)
    try:
        frame = msgpack.packb([2, ["k"], [b"v"], None], use_bin_type=True)
        message = struct.pack("!i", len(frame)) + frame
        os.set_blocking(peer.fileno(), False)
        with contextlib.suppress(BlockingIOError):
            while True:  # until the manager stops reading: its replies to us are stuck
                os.write(peer.fileno(), message)
        with shmstore.SharedByteStore.attach(byte_store.name) as other:
            for i in range(50):
                other.mset([(f"other{i}", b"x")])
        assert byte_store.mget(["other49", "k"]) == [b"x", b"v"]
    finally:
        peer.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames=st.lists(_frames, min_size=1, max_size=4))
def test_fuzzed_frames_never_disturb_other_clients(byte_store, frames):
    peer = _peer(byte_store)
    try:
        for frame in frames:
            peer.send_bytes(frame)
            try:
                parse_reply(peer.recv_bytes())
            except shmstore.StoreError:
                pass
            except EOFError:
                break  # dropped, as a peer sending garbage should be
    except OSError:
        pass  # the manager hung up while we were still sending
    finally:
        peer.close()
    byte_store.mdelete(list(byte_store.yield_keys()))
    _assert_still_serving(byte_store)
    byte_store.mdelete(["canary"])
