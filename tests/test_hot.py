"""The two implementations of the hot functions side by side: the layout constants the
compiled one repeats, twin tables driven by both (identical index words and entries,
batches given as lists of values and as one run of them),
stores written by one read by the other, and the readers' lookup fed hostile memory."""

from __future__ import annotations

import os
import random
import struct
import sys
import types
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shmstore import _hot, _table
from shmstore import _layout as L
from shmstore._limits import Limits
from shmstore._options import Options
from shmstore._policy import Policy
from shmstore._protocol import encode_keys
from shmstore._reader import DirectReader
from shmstore._table import LARGE_VALUE_BYTES, RunOfValues, Table

chot = _hot.load("c")
needs_c = pytest.mark.skipif(chot is _hot.fallback, reason="the compiled core is not built")
fallback = _hot.fallback

AWKWARD = ["", ":", "*", "[", "a b", "é", "\ud800", "k" * 10_000, "x\x00y", "f*", "fo"]


@needs_c
def test_the_compiled_layout_is_the_layout_module():
    for name, value in chot.LAYOUT.items():
        expected = getattr(L, name, None)
        if expected is None:
            expected = getattr(L, f"W_{name}", None)
        assert value == expected, name
    assert (chot.TORN, chot.STALE) == (fallback.TORN, fallback.STALE)


@pytest.mark.parametrize(
    "key", [b"", b"a", bytes(range(45)), "é\ud800".encode("utf-8", "surrogatepass")]
)
def test_key_hash_is_zlib_crc32_in_both(key):
    assert chot.key_hash(key) == fallback.key_hash(key) == zlib.crc32(key)


def _prefix(name: str) -> str:
    return L.segment_prefix(os.environ["SHMSTORE_RUNTIME_DIR"], name)


def _live_entries(table: Table) -> list[tuple[int, bytes]]:
    """(slot, entry bytes) of every live slot."""
    slots, out = table.index.slots, []
    for i in range(table.index.capacity):
        base = i * L.SLOT_WORDS
        ref = slots[base + L.S_REF]
        if ref > L.DELETED:
            klen, vlen = slots[base + L.S_HASH_KLEN] >> 32, slots[base + L.S_VLEN]
            off = ref & L.OFFSET_MASK
            out.append((i, table.arena.buffers[ref >> L.OFFSET_BITS][off : off + klen + vlen]))
    return out


@needs_c
@pytest.mark.parametrize("cache", [False, True], ids=["store", "cache"])
@pytest.mark.parametrize("seed", range(4))
def test_twin_tables_hold_identical_index_and_entries(seed, cache, monkeypatch):
    """Random batches through both implementations; with ``cache``, a SIEVE-bounded
    table, batches with deadlines on a clock the test moves, and reads that set
    visited bytes: those bytes, the queue and the counters must match too."""
    clock = [10**12]
    monkeypatch.setattr(_table, "time", types.SimpleNamespace(monotonic_ns=lambda: clock[0]))
    rng = random.Random(seed)
    universe = AWKWARD + [f"key:{i}" for i in range(3000)]
    policy = Policy.resolve("sieve" if cache else "none")
    limits = Limits.resolve(max_store_bytes=400_000 if cache else None)
    twins = [
        Table(
            _prefix(f"twin{impl}"),
            options=Options(True, 1 << 18, impl),
            arena_bytes=1 << 20,
            limits=limits,
            policy=policy,
        )
        for impl in ("c", "python")
    ]
    try:
        for _ in range(150):
            roll = rng.random()
            if roll < 0.6:
                keys = [rng.choice(universe) for _ in range(rng.randint(0, 80))]
                values = [os.urandom(rng.choice((0, 3, 64, 1536, 9000))) for _ in keys]
                if rng.random() < 0.1:  # large values only: written by the kernel
                    keys = keys[:3]
                    values = [os.urandom(LARGE_VALUE_BYTES + rng.randrange(9000)) for _ in keys]
                ttl = rng.choice((None, 0, 10**9, 5 * 10**9)) if cache else None
                staged = rng.random() < 0.4  # as a staged batch: one run of values
                for table in twins:
                    if staged:
                        run = RunOfValues(bytearray(b"".join(values)), list(map(len, values)))
                        table.set_encoded(encode_keys(keys), run, ttl_ns=ttl, values_stay=True)
                    else:
                        table.set_many(keys, values, ttl_ns=ttl)
            elif roll < 0.8:
                keys = rng.sample(universe, rng.randint(0, 80))
                for table in twins:
                    table.delete_many(keys)
            else:
                keys = rng.sample(universe, rng.randint(0, 200))
                assert twins[0].get_many(keys) == twins[1].get_many(keys)
            clock[0] += rng.randrange(10**9)
        c, py = twins
        assert c.index.capacity == py.index.capacity >= 1024
        assert c.index.slots.tobytes() == py.index.slots.tobytes()
        assert _live_entries(c) == _live_entries(py)
        # Headers and stripes alike, but for the word naming the implementation.
        header_c, header_py = c._header.tolist(), py._header.tolist()
        header_c[L.W_IMPLEMENTATION] = header_py[L.W_IMPLEMENTATION] = 0
        assert header_c == header_py
        assert c.keys(None) == py.keys(None)
        assert c.get_many(universe) == py.get_many(universe)
        if cache:
            assert c.index.visited.tobytes() == py.index.visited.tobytes()
            assert c._sieve.keys() == py._sieve.keys()
            assert header_c[L.W_EVICTIONS] > 0 and header_c[L.W_EXPIRATIONS] > 0
            assert any(c.index.visited.tobytes())
        else:
            assert c.index.capacity > 1024
    finally:
        for table in twins:
            table.close()


@needs_c
@pytest.mark.parametrize("writer", ["c", "python"])
def test_a_store_written_by_one_implementation_reads_the_same_in_the_other(monkeypatch, writer):
    import shmstore

    if writer == "python":
        monkeypatch.setenv("SHMSTORE_PUREPYTHON", "1")
    else:
        monkeypatch.delenv("SHMSTORE_PUREPYTHON", raising=False)
    rng = random.Random(7)
    with shmstore.SharedByteStore() as store:
        model = {}
        universe = AWKWARD + [f"k{i}" for i in range(2000)]
        for _ in range(40):
            pairs = [
                (rng.choice(universe), os.urandom(rng.randint(0, 3000))) for _ in range(64)
            ]
            store.mset(pairs)
            model.update(pairs)
        large = [(f"large{i}", os.urandom(rng.randint(64 << 10, 1 << 20))) for i in range(3)]
        store.mset(large)  # copied by the kernel, read into memory mapped in one call
        model.update(large)
        store.mdelete(list(model)[::5])
        for key in list(model)[::5]:
            del model[key]
        assert store._store_config()[1].implementation == writer
        asked = [*model, "missing", *AWKWARD]
        expected = [model.get(k) for k in asked]
        encoded = [k.encode("utf-8", "surrogatepass") for k in asked]
        for implementation in ("c", "python"):
            reader = DirectReader(store._paths.segment_prefix, implementation)
            try:
                # What the manager published: the owner's choice reached it.
                assert reader.options.implementation == writer
                assert reader.get_many(encoded) == expected, implementation
            finally:
                reader.close()
        assert store.mget(asked) == expected


# -- the readers' lookup against hostile memory ------------------------------------------

_KEYS = [b"", b"a", b"key", b"k" * 40]


@st.composite
def _memory(draw):
    """A ctl, an index and arenas of random or plausible words, and keys to look up."""
    capacity = draw(st.sampled_from([1, 2, 4, 8, 16, 3, 0]))
    arena_sizes = draw(st.lists(st.integers(0, 256), max_size=3))
    arenas = [None] + [draw(st.binary(min_size=n, max_size=n)) for n in arena_sizes]
    if arenas[1:] and draw(st.booleans()):
        arenas[1] = None  # a segment not mapped here
    words = []
    for _ in range(capacity * L.SLOT_WORDS):
        words.append(draw(st.integers(0, 2**64 - 1)))
    for i in range(capacity):
        if draw(st.booleans()):  # a slot that names one of the keys
            kb = draw(st.sampled_from(_KEYS))
            arena = draw(st.integers(0, len(arenas)))
            off = draw(st.integers(0, 300))
            ref = draw(st.sampled_from([0, 1, arena << L.OFFSET_BITS | off]))
            vlen = draw(st.sampled_from([0, 1, 10, 255, 2**40, 2**64 - 1]))
            expires = draw(st.sampled_from([0, 1, 1000, 2**64 - 1]))
            words[i * L.SLOT_WORDS : (i + 1) * L.SLOT_WORDS] = [
                zlib.crc32(kb) | len(kb) << 32, ref, vlen, 0, expires
            ]
    ctl = [0] * (L.CTL_BYTES // 8)
    ctl[L.W_INDEX_GEN] = draw(st.sampled_from([5, 6]))
    for kb in _KEYS:
        ctl[L.HEADER_WORDS + (zlib.crc32(kb) & (L.STRIPES - 1))] = draw(st.sampled_from([0, 2, 3]))
    keys = draw(st.lists(st.sampled_from([*_KEYS, b"other"]), max_size=6))
    visited = draw(st.one_of(st.none(), st.binary(max_size=20)))
    now = draw(st.sampled_from([0, 999, 1000, 2**64 - 1]))
    return ctl, words, arenas, keys, visited, now


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_memory())
def test_lookup_of_hostile_memory_answers_retry_or_what_is_there(memory):
    ctl_words, slot_words, arenas, keys, visited, now = memory
    ctl = memoryview(bytearray(struct.pack(f"{len(ctl_words)}Q", *ctl_words))).cast("Q")
    slots = memoryview(bytearray(struct.pack(f"{len(slot_words)}Q", *slot_words))).cast("Q")
    results = []
    for hot in {chot, fallback}:
        marks = None if visited is None else bytearray(visited)  # each its own copy
        found = hot.lookup(ctl, slots, 5, arenas, keys, marks, now)
        if marks is not None:
            assert len(marks) == len(visited) and set(marks) <= set(visited) | {1}
        if isinstance(found, list):
            assert len(found) == len(keys)
            for value in found:
                assert value is None or any(
                    a is not None and value in a for a in arenas
                ), "a value that is not in any arena"
        else:
            assert found in (hot.TORN, hot.STALE) or found > 0  # an arena to map
        results.append((found, marks))
    assert all(r == results[0] for r in results), "the implementations disagree"


def test_key_hash_agrees_at_every_length_around_the_8_byte_steps():
    data = bytes(range(256)) * 2
    for n in range(0, 80):
        assert chot.key_hash(data[n : 2 * n]) == zlib.crc32(data[n : 2 * n]), n


def test_one_read_spans_more_arena_segments_than_the_lookup_keeps_at_hand(implementation):
    import shmstore

    # 1 MiB segments and 100 kB values: about 40 segments, past the compiled lookup's
    # 16 buffers kept on its stack, so it takes the allocated path.
    with shmstore.SharedByteStore(segment_bytes=1 << 20) as store:
        pairs = [(f"k{i}", os.urandom(100_000)) for i in range(400)]
        for i in range(0, len(pairs), 8):
            store.mset(pairs[i : i + 8])
        assert store.mget([k for k, _ in pairs]) == [v for _, v in pairs]
        assert len(store._reader._arenas) > 17


@needs_c
@pytest.mark.parametrize("manager", ["c", "python"])
def test_readers_tell_a_live_manager_by_its_liveness_mutex_and_a_killed_one_at_once(
    monkeypatch, manager
):
    """A compiled manager holds the robust mutex in its header, so the compiled reader's
    liveness check is one load; once the manager is SIGKILLed the kernel has marked the
    mutex owner-died by the time the process is gone, and the check says so. A
    pure-Python manager holds none (word 0): the check polls the pidfd, with the same
    answers. Either way an orderly stop clears the word before the header goes."""
    import signal

    import shmstore
    from shmstore._segment import Segment
    from tests import _workers

    if manager == "python":
        monkeypatch.setenv("SHMSTORE_PUREPYTHON", "1")
    else:
        monkeypatch.delenv("SHMSTORE_PUREPYTHON", raising=False)
    owner_died, tid_mask = 0x4000_0000, 0x3FFF_FFFF
    for ending in ("stop", "kill"):
        store = shmstore.SharedByteStore()
        segment = Segment.open(L.ctl_name(store._paths.segment_prefix))
        words = memoryview(segment.buf).cast("Q")
        lock = memoryview(segment.buf)[L.W_LIVENESS_MUTEX * 8 :].cast("I")
        pid = store.manager_pid
        pidfd = os.pidfd_open(pid)
        try:
            if manager == "c":
                assert words[L.W_LIVENESS_TID] == pid  # its main thread: tid == pid
                assert lock[0] & tid_mask == pid
            else:
                assert words[L.W_LIVENESS_TID] == 0
            assert chot.manager_alive(pidfd, words) is True
            assert fallback.manager_alive(pidfd, words) is True
            if ending == "stop":
                store.close()
                assert words[L.W_LIVENESS_TID] == 0
            else:
                os.kill(pid, signal.SIGKILL)
                assert _workers.wait_for_exit(pid, timeout_s=10)
                if manager == "c":
                    assert lock[0] & owner_died
                assert words[L.W_LIVENESS_TID] == (pid if manager == "c" else 0)
                store.close()
            assert chot.manager_alive(pidfd, words) is False
            assert fallback.manager_alive(pidfd, words) is False
        finally:
            os.close(pidfd)
            lock.release()
            words.release()
            segment.close()


@needs_c
def test_the_liveness_check_refuses_what_is_not_a_header():
    with pytest.raises(ValueError, match="header"):
        chot.manager_alive(0, bytearray(64))


@pytest.mark.parametrize(
    "implementation",
    [pytest.param(fallback, id="python"), pytest.param(chot, id="c", marks=needs_c)],
)
def test_a_run_of_values_is_placed_only_within_its_source_and_its_segment(implementation):
    arena = bytearray(256)
    arenas = [None, arena]
    ref = 1 << L.OFFSET_BITS | 16
    implementation.place_run(arenas, [ref], [b"key"], b"..value..", [5])
    assert arena[16:24] == b"key..val"
    with pytest.raises(ValueError, match="overrun"):
        implementation.place_run(arenas, [ref], [b"key"], b"short", [6])  # past the source
    with pytest.raises(ValueError, match="overrun"):  # past the arena segment
        implementation.place_run(arenas, [1 << L.OFFSET_BITS | 250], [b"key"], b"x" * 9, [9])
    assert arena[250:] == bytes(6)


@pytest.mark.parametrize(
    "implementation",
    [pytest.param(fallback, id="python"), pytest.param(chot, id="c", marks=needs_c)],
)
def test_staged_values_are_laid_end_to_end_or_not_at_all(implementation):
    target = bytearray(16)
    assert implementation.stage_values(target, [b"abc", b"", b"defgh"]) == 8
    assert target[:8] == b"abcdefgh" and target[8:] == bytes(8)
    again = bytearray(16)
    with pytest.raises(ValueError, match="overrun"):
        implementation.stage_values(again, [b"x" * 10, b"y" * 7])
    assert again == bytearray(16)  # nothing written
    with pytest.raises(TypeError, match="position 1"):
        implementation.stage_values(again, [b"x", bytearray(b"y")])
    # What is staged is what place_run reads back.
    arena = bytearray(64)
    implementation.place_run([None, arena], [1 << L.OFFSET_BITS], [b"k"], target, [3])
    assert arena[:4] == b"kabc"


class _Str(str):
    pass


_ITEMS = st.one_of(
    st.tuples(st.sampled_from(AWKWARD) | st.text(max_size=8), st.binary(max_size=8)),
    st.sampled_from(
        [
            ["list", b"pair"],
            ("three", b"items", b""),
            ("one",),
            (_Str("str subclass"), b""),
            ("bytearray", bytearray(b"x")),
            (b"bytes key", b""),
            "ab",
            None,
        ]
    ),
)


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.lists(_ITEMS, max_size=6))
def test_a_batch_of_pairs_is_taken_apart_the_same_by_both(pairs):
    split = fallback.split_bytes_pairs(pairs)
    assert chot.split_bytes_pairs(pairs) == split
    plain = all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is str and type(p[1]) is bytes
        for p in pairs
    )
    if not plain:
        assert split is None  # the caller's general path takes it, and names what is wrong
        return
    keys, values = [k for k, _ in pairs], [v for _, v in pairs]
    sizes = [len(v) for v in values]
    assert split == (keys, values, sizes, sum(sizes), sum(map(len, keys)))


@pytest.mark.parametrize(
    "implementation",
    [pytest.param(fallback, id="python"), pytest.param(chot, id="c", marks=needs_c)],
)
def test_only_a_list_of_pairs_is_taken_apart(implementation):
    for not_a_list in (iter([("k", b"v")]), (("k", b"v"),), type("L", (list,), {})()):
        with pytest.raises(TypeError, match="list"):
            implementation.split_bytes_pairs(not_a_list)


@needs_c
def test_taking_a_batch_apart_keeps_no_reference():
    key, value = "".join(["key"] * 20), bytes(range(100))  # neither shared nor interned
    before = sys.getrefcount(key), sys.getrefcount(value)
    for _ in range(100):
        assert chot.split_bytes_pairs([(key, value)])[0] == [key]
        assert chot.split_bytes_pairs([(key, value), (key, None)]) is None
    assert (sys.getrefcount(key), sys.getrefcount(value)) == before
