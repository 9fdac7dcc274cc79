"""A full /dev/shm: a clear StoreFullError for the write that does not fit, never a
SIGBUS, and the store keeps serving reads and writes that fit."""

from __future__ import annotations

import textwrap

from tests import _workers

# Run in a private mount namespace whose /dev/shm is a 16 MiB tmpfs, so "full" is
# reached in a second without touching the machine's real /dev/shm.
_SCRIPT = textwrap.dedent(
    """
    import os, shmstore
    # The default max_store_bytes (3/4 of /dev/shm) would stop the store first.
    with shmstore.SharedByteStore(max_store_bytes=1 << 40) as store:
        store.mset([("small", b"x" * 100)])
        batches = 0
        try:
            while True:  # 200 kB batches, staged in the proxy's two kept segments
                store.mset([(f"k{batches}", os.urandom(100_000)),
                            (f"k{batches}b", os.urandom(100_000))])
                batches += 1
        except shmstore.StoreFullError:
            print("manager full")
        last = f"k{batches}"
        assert store.mget([last, last + "b"]) == [None, None], "a refused batch was applied"
        assert store.mget(["small"]) == [b"x" * 100]
        store.mdelete([f"k{batches - 1}"])
        store.mset([("again", b"z" * 100_000)])  # the freed space is reused
        assert store.mget(["again"]) == [b"z" * 100_000]
        try:  # 40 MiB: no room to stage it, nor in the manager's arena
            store.mset([("huge", b"y" * (40 << 20))])
        except shmstore.StoreFullError:
            print("staging full")
        assert store.mget(["huge"]) == [None]
    assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
    print("ok")
    """
)


def test_full_shared_memory_refuses_the_write_and_keeps_serving(tmp_path):
    done = _workers.run_with_private_shm(_SCRIPT, "16m", tmp_path, timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["manager", "full", "staging", "full", "ok"]
