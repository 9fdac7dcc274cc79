"""The arena allocator on its own: size classes, reuse of freed blocks by their class
only, the bump pointer, and new segments when one is full."""

from __future__ import annotations

import os

import pytest

from shmstore import _layout as L
from shmstore._arena import RESERVE_AHEAD, RESERVE_CHUNK, Arena
from shmstore._errors import StoreFullError
from shmstore._segment import Segment


@pytest.fixture
def arena():
    arena = Arena(L.segment_prefix(os.environ["SHMSTORE_RUNTIME_DIR"], "arenatest"), 1 << 20)
    yield arena
    arena.close()


def _offset(ref: int) -> int:
    return ref & L.OFFSET_MASK


def test_blocks_are_laid_end_to_end_in_their_size_class(arena):
    sizes = arena.entry_sizes([1, 100, 1581, 8])
    assert sizes == [8, 104, 1600, 8]
    arena.make_room(sum(sizes))
    refs = arena.allocate(sizes)
    assert [_offset(r) for r in refs] == [0, 8, 112, 1712]
    assert {r >> L.OFFSET_BITS for r in refs} == {1}
    assert arena.bump == 1720


def test_a_batch_of_one_class_is_laid_end_to_end_from_the_bump_pointer(arena):
    arena.make_room(104 + 5 * 1600)
    arena.allocate([104])
    refs = arena.allocate([1600] * 5)
    assert [_offset(r) for r in refs] == [104 + 1600 * i for i in range(5)]
    assert {r >> L.OFFSET_BITS for r in refs} == {1}
    assert arena.bump == 104 + 5 * 1600
    empty = arena.allocate([0, 0])  # an empty key with an empty value takes no bytes
    assert [_offset(r) for r in empty] == [104 + 5 * 1600] * 2 and arena.bump == 104 + 8000


def test_a_freed_block_is_reused_by_its_class_only(arena):
    arena.make_room(4096)
    first = arena.allocate(arena.entry_sizes([1581, 100]))
    arena.release(first, [1590, 97])  # same classes as allocated: 1600 and 104
    arena.make_room(4096)
    again = arena.allocate(arena.entry_sizes([1600, 50, 104]))
    assert again[0] == first[0] and again[2] == first[1]
    assert _offset(again[1]) == 1704  # a class with nothing freed: the bump pointer


@pytest.mark.parametrize("n", [1, 3, 4, 6])
def test_a_batch_of_one_class_takes_its_freed_blocks_last_freed_first(arena, n):
    # An overwrite of a cache of embeddings: as many, fewer or more entries of the
    # class than were freed.
    arena.make_room(1 << 16)
    first = arena.allocate([1600] * 4)
    arena.release(first, [1590] * 4)
    bump = arena.bump
    arena.make_room(arena.bump_need([1600] * n))
    refs = arena.allocate([1600] * n)
    reused = min(n, 4)
    assert refs[:reused] == first[::-1][:reused]
    assert [_offset(r) for r in refs[reused:]] == [bump + 1600 * i for i in range(n - reused)]
    assert arena.bump == bump + 1600 * (n - reused)
    if n < 4:  # the rest stay free, for the next batch
        assert arena.allocate([1600] * (4 - n)) == first[::-1][n:]


def test_a_full_segment_is_followed_by_a_new_one(arena):
    arena.make_room(900 << 10)
    arena.allocate([900 << 10])
    arena.make_room(300 << 10)
    (ref,) = arena.allocate([300 << 10])
    assert ref >> L.OFFSET_BITS == 2 and _offset(ref) == 0
    assert len(arena.buffers) == 3 and arena.buffers[0] is None
    arena.make_room(3 << 20)  # larger than a segment: a segment of its own size
    (big,) = arena.allocate([3 << 20])
    assert big >> L.OFFSET_BITS == 3 and len(arena.buffers[3]) >= 3 << 20


@pytest.mark.parametrize(
    "later",
    [[1600] * 3, [1600] * 5, [1600, 104, 1600, 48], [48, 48]],
    ids=["freed-cover-it", "more-than-freed", "mixed-classes", "no-class-freed"],
)
def test_bump_need_is_what_allocate_takes_from_the_bump_pointer(arena, later):
    # make_room asks the kernel for this much, so a full /dev/shm still takes a batch
    # that fits in freed blocks.
    arena.make_room(1 << 16)
    first = arena.allocate([1600] * 4 + [104])
    arena.release(first, [1590] * 4 + [97])
    need, bump = arena.bump_need(later), arena.bump
    arena.allocate(later)
    assert arena.bump - bump == need


@pytest.fixture
def room(monkeypatch):
    """/dev/shm with room for 16 more pages."""
    room = {"pages": 16}
    reserve = Segment.reserve

    def reserve_within_room(segment, start, length, populate=True):
        pages = -(-length // 4096)
        if pages > room["pages"]:
            raise StoreFullError("shared memory is full")
        room["pages"] -= pages
        reserve(segment, start, length, populate)

    monkeypatch.setattr(Segment, "reserve", reserve_within_room)
    return room


def test_a_batch_reserves_its_own_pages_only_so_one_that_fits_is_taken(arena, room):
    arena.make_room(10_000)
    arena.allocate([10_000])
    assert room["pages"] == 16 - 3  # the batch's three pages
    left = 3 * 4096 - 10_000 + 13 * 4096  # to the end of the 16th page
    with pytest.raises(StoreFullError):
        arena.make_room(left + 1)  # a 17th page: over the room
    arena.make_room(left)
    assert room["pages"] == 0


def test_reserving_ahead_goes_a_chunk_at_a_time_to_reserve_ahead_past_the_bump(arena):
    assert not arena.reserve_ahead()  # no segment yet: the first batch makes one
    arena.make_room(10_000)
    arena.allocate([10_000])
    steps = 0
    while arena.reserve_ahead():
        steps += 1
    reserved = 3 * 4096 + steps * RESERVE_CHUNK
    assert reserved - arena.bump >= RESERVE_AHEAD > reserved - RESERVE_CHUNK - arena.bump
    arena.make_room(RESERVE_AHEAD)  # reserved already: allocating it cannot fail
    arena.allocate([RESERVE_AHEAD])
    assert arena.reserve_ahead()  # short again


def test_reserving_ahead_stops_at_the_end_of_the_segment(arena):
    arena.make_room((1 << 20) - 4096)
    arena.allocate([(1 << 20) - 4096])  # the 1 MiB segment's last page left
    assert arena.reserve_ahead()
    assert not arena.reserve_ahead()
    arena.allocate([4096])  # reserved to its end, so this takes no new page


def test_reserving_ahead_in_a_full_shared_memory_changes_nothing(arena, room):
    arena.make_room(4096)
    room["pages"] = 0
    assert not arena.reserve_ahead()
    with pytest.raises(StoreFullError):
        arena.make_room(2 * 4096)  # nothing was recorded as reserved


def test_write_puts_each_entry_at_its_ref_and_nothing_past_its_segment(arena):
    arena.make_room(300_000, populate=False)
    refs = arena.allocate(arena.entry_sizes([3 + 70_000, 1 + 200_000]))
    values = [os.urandom(70_000), memoryview(os.urandom(200_000))]
    arena.write(refs, [b"key", b"k"], values)
    at = [_offset(ref) for ref in refs]
    buf = arena.buffers[1]
    assert buf[at[0] : at[0] + 70_003] == b"key" + values[0]
    assert buf[at[1] : at[1] + 200_001] == b"k" + bytes(values[1])
    end = (1 << L.OFFSET_BITS) | (len(buf) - 10)
    with pytest.raises(ValueError, match="overruns"):
        arena.write([end], [b"key"], [b"x" * 8])
    assert buf[len(buf) - 10 :] == bytes(10)
