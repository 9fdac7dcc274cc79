"""The ``mset`` request frames decoded by the hot functions (``parse_mset``, and
``parse_mset_shm`` for a staged batch), twice: for every frame, each implementation
gives what the protocol's full parse gives (keys encoded as the table takes them) or
declines it, and declines every frame that parse rejects; the compiled one takes every
frame the proxies pack. The hostile frames of ``fuzz_corpus/`` reach the manager
through this decoding in test_hostile.py."""

from __future__ import annotations

import os
import random

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmstore import _hot
from shmstore import _protocol as proto
from shmstore._errors import ProtocolError

chot = _hot.load("c")
needs_c = pytest.mark.skipif(chot is _hot.fallback, reason="the compiled core is not built")
IMPLEMENTATIONS = [
    pytest.param(_hot.fallback, id="python"),
    pytest.param(chot, id="c", marks=needs_c),
]
CORPUS = os.path.join(os.path.dirname(__file__), "fuzz_corpus")
MAX_TTL_NS = (1 << 62) - 1


def _reference(frame: bytes):
    """What the protocol's full parse makes of ``frame`` as an mset, or ``None``."""
    try:
        op, args = proto.parse_request(frame)
    except ProtocolError:
        return None
    if op != proto.MSET:
        return None
    keys, values, ttl = args
    return [k.encode("utf-8", "surrogatepass") for k in keys], values, ttl


def _reference_staged(frame: bytes):
    """What the protocol's full parse makes of ``frame`` as a staged mset, or ``None``."""
    try:
        op, args = proto.parse_request(frame)
    except ProtocolError:
        return None
    if op != proto.MSET_SHM:
        return None
    keys, segment, lengths, ttl = args
    return [k.encode("utf-8", "surrogatepass") for k in keys], segment, lengths, ttl


def _check_staged(implementation, frame: bytes, packed_by_proxy: bool = False) -> None:
    got, want = implementation.parse_mset_shm(frame), _reference_staged(frame)
    if packed_by_proxy:
        assert got is not None and want is not None
    if got is not None:
        assert want is not None, frame[:64]
        assert (list(got[0]), got[1], list(got[2]), got[3]) == want
        assert all(type(x) is bytes for x in got[0]) and type(got[1]) is str
        assert all(type(n) is int for n in got[2])


def _check(implementation, frame: bytes, packed_by_proxy: bool = False) -> None:
    _check_staged(implementation, frame)
    got, want = implementation.parse_mset(frame), _reference(frame)
    if packed_by_proxy:
        assert got is not None and want is not None
    if got is not None:  # declining is always allowed; a wrong answer never is
        assert want is not None, frame[:64]
        assert (list(got[0]), list(got[1]), got[2]) == (want[0], want[1], want[2])
        assert all(type(x) is bytes for x in [*got[0], *got[1]])


@needs_c
def test_the_compiled_protocol_constants_are_the_protocol_module():
    assert chot.PROTOCOL == {
        "MSET": proto.MSET, "MSET_SHM": proto.MSET_SHM, "MAX_TTL_NS": MAX_TTL_NS
    }
    assert proto._MAX_TTL_NS == MAX_TTL_NS


_keys = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from(["", "\ud800", "x\udfff", "é", "k" * 300, "\x00", "\U0010ffff"]),
    ),
    max_size=40,
)
_ttls = st.one_of(
    st.none(),
    st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, MAX_TTL_NS]),
    st.integers(0, MAX_TTL_NS),
)


@settings(max_examples=300, deadline=None)
@given(keys=_keys)
def test_a_request_packs_to_the_same_bytes_with_or_without_lone_surrogates(keys):
    # pack tries msgpack's strict UTF-8 path first; the wire format is still the one
    # surrogatepass gives, which the manager decodes, for every str a key may be.
    message = [proto.MSET_SHM, keys, "s1.2", [len(k) for k in keys], None]
    expected = msgpack.packb(message, use_bin_type=True, unicode_errors="surrogatepass")
    assert proto.pack(message) == expected
    assert proto.parse_request(expected)[1][0] == keys


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=_keys, ttl=_ttls, data=st.data())
def test_every_frame_a_proxy_packs_is_decoded_as_the_protocol_decodes_it(
    implementation, keys, ttl, data
):
    sizes = st.sampled_from([0, 1, 31, 32, 255, 256, 1536, 65535, 65536, 70_000])
    values = [os.urandom(data.draw(sizes)) for _ in keys]
    _check(implementation, proto.pack([proto.MSET, keys, values, ttl]), packed_by_proxy=True)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=_keys, ttl=_ttls, data=st.data())
def test_every_staged_frame_a_proxy_packs_is_decoded_as_the_protocol_decodes_it(
    implementation, keys, ttl, data
):
    lengths = [data.draw(st.sampled_from([0, 1, 127, 128, 255, 256, 65535, 65536, 2**32]))
               for _ in keys]
    segment = f"s{data.draw(st.integers(0, 2**22))}.{data.draw(st.integers(0, 2**40))}"
    frame = proto.pack([proto.MSET_SHM, keys, segment, lengths, ttl])
    _check_staged(implementation, frame, packed_by_proxy=True)


def _variants() -> list[bytes]:
    """Frames near a well-formed mset: wrong types, counts, lengths, ttls, opcodes,
    longer encodings of the same numbers, bytes cut off or added."""
    mset = proto.MSET
    frames = [
        proto.pack([mset, ["a", "b"], [b"1"], None]),  # fewer values
        proto.pack([mset, ["a"], [b"1", b"2"], None]),  # more values
        proto.pack([mset, [b"a"], [b"1"], None]),  # a bin key
        proto.pack([mset, ["a"], ["1"], None]),  # a str value
        proto.pack([mset, ["a"], [1], None]),
        proto.pack([mset, "a", [b"1"], None]),
        proto.pack([mset, ["a"], [b"1"], -1]),
        proto.pack([mset, ["a"], [b"1"], MAX_TTL_NS + 1]),
        proto.pack([mset, ["a"], [b"1"], 1.5]),
        proto.pack([mset, ["a"], [b"1"]]),
        proto.pack([mset, ["a"], [b"1"], None, None]),
        proto.pack([proto.MGET, ["a"]]),
        proto.pack([proto.MSET_SHM, ["a"], "s1.1", [1], None]),
        proto.pack({"op": mset}),
        b"\x94\x02\x91\xa1\xff\x91\xc4\x01x\xc0",  # a key that is not UTF-8
        b"\x94\x02\x91\xa3\xed\xa0\x80\x91\xc4\x01x\xc0",  # a lone surrogate: valid
        b"\x94\xcc\x02\x91\xa1a\x91\xc4\x01x\xc0",  # the opcode as uint8
        b"\x94\x02\x91\xa1a\x91\xc4\x01x\xd0\x05",  # ttl as int8
        b"\x94\x02\x91\xa1a\x91\xc4\x01x\xcc\x05",  # ttl as uint8 where a fixint would do
        b"\x94\x02\xdc\x00\x01\xd9\x01a\xdd\x00\x00\x00\x01\xc5\x00\x01x\xc0",  # long forms
        b"\x94\x02\xdd\xff\xff\xff\xff\xc0",  # 4G keys claimed
        b"\x94\x02\x91\xdb\xff\xff\xff\xffa",  # a 4 GB key claimed
        b"\x94\x02\x91\xa1a\x91\xc6\xff\xff\xff\xffx\xc0",  # a 4 GB value claimed
        b"\x94\x02\x90\x90\xc0",  # empty batch
    ]
    staged = proto.MSET_SHM
    frames += [
        proto.pack([staged, ["a"], "s1.1", [1], None]),
        proto.pack([staged, ["a", "b"], "s1.1", [1], None]),  # fewer lengths
        proto.pack([staged, ["a"], "s1.1", [-1], None]),  # a negative length
        proto.pack([staged, ["a"], "s1.1", [1.0], None]),
        proto.pack([staged, ["a"], b"s1.1", [1], None]),  # the segment as bin
        proto.pack([staged, ["a"], "s1.", [1], None]),
        proto.pack([staged, ["a"], "s.1", [1], None]),
        proto.pack([staged, ["a"], "x1.1", [1], None]),
        proto.pack([staged, ["a"], "s1.1x", [1], None]),
        proto.pack([staged, ["a"], "s1.1.1", [1], None]),
        proto.pack([staged, ["a"], "s\u0661.1", [1], None]),  # a non-ASCII digit
        proto.pack([staged, ["a"], "../s1.1", [1], None]),
        proto.pack([staged, ["a"], "s1.1", [1], -5]),
        proto.pack([staged, ["a"], "s1.1", [1]]),
        b"\x95\x05\x91\xa1a\xa4s1.1\x91\xcc\x05\xc0",  # a length as uint8 needlessly
        b"\x95\x05\x91\xa1a\xa4s1.1\x91\xcf" + bytes(8) + b"\xc0",
        b"\x95\x05\x91\xa1a\xa4s1.1\xdd\xff\xff\xff\xff\xc0",  # 4G lengths claimed
    ]
    rng = random.Random(9)
    for good in (
        proto.pack([mset, ["key", "é\ud800"], [b"v" * 40, b""], 12345]),
        proto.pack([staged, ["key", "é\ud800", ""], "s123.45", [40, 0, 70000], 12345]),
    ):
        frames += [good[:n] for n in range(len(good))]
        frames += [good + b"\x00", good + good]
        for _ in range(2000):
            flipped = bytearray(good)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            frames.append(bytes(flipped))
    for name in sorted(os.listdir(CORPUS)):
        with open(os.path.join(CORPUS, name), "rb") as f:
            frames.append(f.read())
    return frames


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_frame_is_decoded_as_the_protocol_decodes_it_or_declined(implementation):
    for frame in _variants():
        _check(implementation, frame)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_what_is_not_a_bytes_frame_is_declined(implementation):
    good = proto.pack([proto.MSET, ["a"], [b"1"], None])
    staged = proto.pack([proto.MSET_SHM, ["a"], "s1.1", [1], None])
    for frame in (bytearray(good), memoryview(good), None, 5):
        assert implementation.parse_mset(frame) is None
    for frame in (bytearray(staged), memoryview(staged), None, 5):
        assert implementation.parse_mset_shm(frame) is None
