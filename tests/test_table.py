"""The manager's table on its own, against a dict, with each implementation of the hot
functions: batches that repeat keys, overwrite them with values of other sizes, delete
them and add them again, through several index rebuilds, so that collisions,
tombstones and reused arena blocks all occur."""

from __future__ import annotations

import os
import random

import pytest

from shmstore import _layout as L
from shmstore._index import INITIAL_CAPACITY
from shmstore._options import Options
from shmstore._protocol import encode_keys
from shmstore._segment import Segment
from shmstore._table import LARGE_VALUE_BYTES, RunOfValues, Table
from tests._workers import AWKWARD_KEYS


@pytest.fixture
def table(implementation):
    prefix = L.segment_prefix(os.environ["SHMSTORE_RUNTIME_DIR"], "tabletest")
    table = Table(prefix, options=Options(True, 1 << 18, implementation))
    yield table
    table.close()


def _check(table: Table, model: dict[str, bytes]) -> None:
    keys = list(model)
    assert table.get_many(keys) == [model[k] for k in keys]
    assert table.keys(None) == keys  # insertion order, as a dict's
    header = table._header
    assert header[L.W_LIVE_KEYS] == len(model)
    assert header[L.W_LIVE_BYTES] == sum(
        len(k.encode("utf-8", "surrogatepass")) + len(v) for k, v in model.items()
    )
    # Every stripe even: no write window is left open.
    stripes = header[L.HEADER_WORDS :]
    assert not any(v & 1 for v in stripes.tolist())


@pytest.mark.parametrize("seed", range(3))
def test_random_batches_match_a_dict(table, seed):
    rng = random.Random(seed)
    model: dict[str, bytes] = {}
    # Enough distinct keys for the index to grow several times, from INITIAL_CAPACITY.
    universe = AWKWARD_KEYS + [f"k{i}" for i in range(INITIAL_CAPACITY * 6)]
    for step in range(400):
        kind = rng.random()
        if kind < 0.7:
            pairs = [
                (rng.choice(universe), os.urandom(rng.choice((0, rng.randrange(48), 300, 1536))))
                for _ in range(rng.randint(0, 64))
            ]
            if pairs and rng.random() < 0.2:
                pairs.append((pairs[0][0], b"again"))  # a key repeated in one batch
            table.set_many([k for k, _ in pairs], [v for _, v in pairs])
            model.update(pairs)
        else:
            doomed = rng.sample(universe, rng.randint(0, 64))
            table.delete_many(doomed)
            for key in doomed:
                model.pop(key, None)
        if step % 50 == 49:
            _check(table, model)
    assert table.index.capacity > INITIAL_CAPACITY  # the index was rebuilt on the way
    _check(table, model)


def test_space_of_overwritten_values_is_reused(table):
    keys = [f"key{i}" for i in range(500)]
    table.set_many(keys, [bytes(1536)] * len(keys))
    used = table.arena.bump
    for round_ in range(5):
        table.set_many(keys, [bytes([round_]) * 1536] * len(keys))
    # Each round's values fill the blocks the round before freed: one batch of slack.
    assert table.arena.bump <= 2 * used
    assert table.get_many(keys[:1]) == [bytes([4]) * 1536]


def test_large_values_and_large_batches_round_trip(table):
    values = [os.urandom(1 << 20), os.urandom(3), os.urandom((1 << 20) + 7)]
    table.set_many(["a", "b", "c"], values)
    assert table.get_many(["c", "a", "b"]) == [values[2], values[0], values[1]]
    many = {f"small{i}": os.urandom(1536) for i in range(1000)}
    table.set_many(list(many), list(many.values()))
    _check(table, {"a": values[0], "b": values[1], "c": values[2], **many})


def test_a_batch_of_large_values_is_copied_by_the_kernel_into_unmapped_pages(
    table, monkeypatch
):
    reserved = []  # (segment name, populate) of each arena reservation
    reserve = Segment.reserve

    def spy(segment, start, length, populate=True):
        if segment.name.rsplit(".", 1)[-1].startswith("a"):
            reserved.append(populate)
        reserve(segment, start, length, populate)

    monkeypatch.setattr(Segment, "reserve", spy)
    big = [os.urandom(LARGE_VALUE_BYTES), os.urandom(LARGE_VALUE_BYTES + 4093)]
    table.set_many(["a", AWKWARD_KEYS[1]], big)
    assert reserved == [False]  # allocated, not populated: Arena.write fills them
    run = [os.urandom(3 * LARGE_VALUE_BYTES + 1) for _ in range(3)]
    staged = RunOfValues(bytearray(b"".join(run)), list(map(len, run)))
    table.set_encoded(encode_keys(["s0", "s1", "a"]), staged, values_stay=True)
    mixed = [os.urandom(LARGE_VALUE_BYTES), b"small"]  # not only large: the mapping
    table.set_many(["m0", "m1"], mixed)
    assert reserved == [False, False, True]
    _check(table, {"a": run[2], AWKWARD_KEYS[1]: big[1], "s0": run[0], "s1": run[1],
                   "m0": mixed[0], "m1": mixed[1]})
    table.set_many(["s0", "s1"], big)  # into the blocks the staged batch's values freed
    assert table.get_many(["s0", "s1"]) == big


@pytest.mark.parametrize("seed", range(3))
def test_rebuilt_index_finds_every_key(table, seed):
    # Rebuilt nearly full, the index has keys that wrap around its end.
    rng = random.Random(seed)
    keys = [f"{rng.random()}" for _ in range(700)]
    table.set_many(keys, [k.encode() for k in keys])
    table.delete_many(keys[::7])  # tombstones are left behind, not copied
    live = [k for i, k in enumerate(keys) if i % 7]
    for capacity in (1024, 4096, 1024):
        table.index.rebuild(capacity)
        assert table.get_many(live) == [k.encode() for k in live]
        assert table.get_many(keys[::7]) == [None] * len(keys[::7])
    _check(table, {k: k.encode() for k in live})


def test_deadline_records_of_overwritten_keys_do_not_pile_up(table, monkeypatch):
    import types

    from shmstore import _table

    clock = [10**12]
    monkeypatch.setattr(_table, "time", types.SimpleNamespace(monotonic_ns=lambda: clock[0]))
    keys = [f"k{i}" for i in range(64)]
    for _ in range(3000):  # 192,000 writes with an hour to live, of 64 keys
        table.set_many(keys, [b"v"] * 64, ttl_ns=3600 * 10**9)
    assert table._deadlines.recorded <= 2 * 64 + (1 << 16) + 64
    table.set_many(["short"], [b"s"], ttl_ns=10**9)
    clock[0] += 2 * 10**9
    assert table.get_many(["short", "k0"]) == [None, b"v"]
    table.sweep()
    assert table.keys(None) == keys
    clock[0] += 3600 * 10**9
    table.sweep()
    assert table.keys(None) == [] and table._header[L.W_EXPIRATIONS] == 65


def test_a_run_of_large_values_past_its_buffer_writes_nothing(table):
    from shmstore._table import _write_large

    arena = table.arena
    arena.make_room(3 * LARGE_VALUE_BYTES, populate=False)
    refs = arena.allocate(arena.entry_sizes([1 + LARGE_VALUE_BYTES] * 2))
    run = RunOfValues(bytearray(b"x" * (2 * LARGE_VALUE_BYTES - 1)), [LARGE_VALUE_BYTES] * 2)
    with pytest.raises(ValueError, match="overrun"):
        _write_large(arena, refs, [b"a", b"b"], run, run.lengths)
    assert arena.buffers[1][: 3 * LARGE_VALUE_BYTES] == bytes(3 * LARGE_VALUE_BYTES)
