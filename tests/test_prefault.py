"""A writing proxy's prefaulting (shmstore._prefault): it clears the pages just past
the manager's reservation, as far as its span and no further, and stops for good at
its first failure. Driven step by step, so no test depends on how long a reply takes."""

from __future__ import annotations

import shmstore
from shmstore import _layout as L
from shmstore._arena import RESERVE_AHEAD
from shmstore._prefault import SPAN, STEP, Prefaulter
from shmstore._segment import Segment
from tests import _workers


def test_it_prefaults_its_span_past_the_managers_reservation_and_no_further():
    with shmstore.SharedByteStore() as store:
        prefix = store._paths.segment_prefix
        store.mset([("k", b"v" * 10_000)])
        ctl = Segment.open(L.ctl_name(prefix))
        header = memoryview(ctl.buf).cast("Q")
        try:
            # The manager reserves ahead while idle, and publishes how far it got.
            assert _workers.eventually(
                lambda: header[L.W_RESERVED] & L.OFFSET_MASK >= RESERVE_AHEAD, within_s=10
            )
            assert header[L.W_RESERVED] >> L.OFFSET_BITS == 1  # the first arena segment
        finally:
            header.release()
            ctl.close()
        arena = prefix.lstrip("/") + "a"
        before = _workers.shm_bytes(arena)
        prefaulter = Prefaulter(prefix)
        steps = 0
        while prefaulter.step():
            steps += 1
        assert steps == SPAN // STEP
        assert _workers.shm_bytes(arena) - before == SPAN  # pages the manager had not
        prefaulter.close()
        assert not prefaulter.step()
        assert store.mget(["k"]) == [b"v" * 10_000]


def test_it_stops_for_good_at_its_first_failure(tmp_path):
    prefaulter = Prefaulter(L.segment_prefix(str(tmp_path), "nosuchstore"))
    assert not prefaulter.step()  # no such store: its header cannot be mapped
    assert not prefaulter.step()

