"""Shared-memory segments on their own: what the writer's reserving and writing leave in
a segment, as a reader of its mapping sees it."""

from __future__ import annotations

import os

import pytest

from shmstore import _layout as L
from shmstore import _segment
from shmstore._segment import Segment, unlink_segment


@pytest.fixture
def segment():
    name = L.segment_prefix(os.environ["SHMSTORE_RUNTIME_DIR"], "segmenttest") + "a1"
    segment = Segment.create(name, 1 << 20)
    yield segment
    segment.close()
    unlink_segment(name)


@pytest.mark.parametrize("populate", [True, False])
def test_write_lays_its_parts_end_to_end_in_reserved_pages(segment, populate):
    segment.reserve(0, 64 << 10, populate=populate)
    parts = [b"key", os.urandom(20_000), b"", memoryview(b"tail")]
    segment.write(4090, parts)  # across page boundaries, from a page's end
    written = b"".join(bytes(part) for part in parts)
    assert segment.buf[4090 : 4090 + len(written)] == written
    # A page filled in part without being mapped first reads as zeros elsewhere.
    assert segment.buf[: 4090] == bytes(4090)
    end = 4090 + len(written)
    assert segment.buf[end : 64 << 10] == bytes((64 << 10) - end)


def test_write_goes_on_after_a_short_write(segment, monkeypatch):
    segment.reserve(0, 64 << 10, populate=False)
    pwritev, calls = os.pwritev, []

    def at_most_1000_bytes(fd, buffers, offset):
        calls.append(offset)
        head, left = [], 1000
        for buffer in buffers:
            if left:
                head.append(memoryview(buffer)[:left])
                left -= head[-1].nbytes
        return pwritev(fd, head, offset)

    monkeypatch.setattr(_segment.os, "pwritev", at_most_1000_bytes)
    parts = [b"k" * 10, os.urandom(2500), os.urandom(990)]
    segment.write(100, parts)
    assert segment.buf[100 : 100 + 3500] == b"".join(parts)
    assert calls == [100, 1100, 2100, 3100]


def test_write_of_nothing_writes_nothing(segment):
    segment.reserve(0, 4096)
    segment.write(0, [b"", b""])
    segment.write(10, [])
    assert segment.buf[:4096] == bytes(4096)
