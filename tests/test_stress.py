"""Concurrent writers and readers on one store: zero torn, phantom, stale or half-applied
reads, while the store is overwritten, shrunk and grown under the readers."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import shmstore
from tests import _workers

GROUPS, GROUP_SIZE, READERS = 24, 16, 2


def _stress(ops: int) -> list[tuple]:
    """Readers of whole groups against a writer of those groups that never pauses
    (overwrites and deletes), beside a second writer of other keys that never pauses
    either."""
    ctx = multiprocessing.get_context("spawn")
    # 8-byte slots written by one process: reads of them are atomic on x86-64.
    started = ctx.Array("q", GROUPS, lock=False)
    acked = ctx.Array("q", GROUPS, lock=False)
    ready, done, results = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    # Small arena segments, so the arena grows by new segments under the readers.
    with shmstore.SharedByteStore(segment_bytes=4 << 20) as store:
        readers = [
            ctx.Process(
                target=_workers.stress_reader,
                args=(store, GROUPS, GROUP_SIZE, started, acked, ready, done, results),
            )
            for _ in range(READERS)
        ]
        writer = ctx.Process(
            target=_workers.stress_writer,
            args=(store, GROUPS, GROUP_SIZE, ops, started, acked, ready, done),
        )
        noise = ctx.Process(target=_workers.noise_writer, args=(store, done))
        for process in [*readers, writer, noise]:
            process.start()
        writer.join()
        noise.join()
        outcomes = [results.get() for _ in readers]
        for reader in readers:
            reader.join()
        results.close()
        assert writer.exitcode == noise.exitcode == 0
        assert all(r.exitcode == 0 for r in readers)
        assert _arena_segments(store) > 1  # the arena did grow while readers read
    return outcomes


def _arena_segments(store) -> int:
    prefix = store._paths.segment_prefix.lstrip("/") + "a"
    return sum(entry.startswith(prefix) for entry in os.listdir("/dev/shm"))


def _check(outcomes: list[tuple]) -> None:
    for reads, examples, violations, versions_seen in outcomes:
        assert violations == 0, examples
        # The readers really overlapped the writer: they saw many versions go by.
        assert reads > 0 and versions_seen > 1


def test_readers_never_see_torn_phantom_stale_or_partial_values(implementation):
    _check(_stress(ops=1500))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_long_stress(implementation):
    _check(_stress(ops=60_000))
