"""The near cache (issue 11): repeated reads through ``RedisByteStore(...,
near_cache_bytes=N)`` beside the same reads from a ``SharedByteStore`` and from Redis
without a near cache, in one run; then how long another host's write takes to reach
this host's near cache.

Reads: 4,096 keys of 45 characters with 1,536-byte values, in the store (and, for the
near cache, read once so it holds them all), then read again in batches of 64 and one
key at a time. Each figure is the median of ``--repeat`` rounds, the three stores
taking turns, each round in a fresh spawned worker.

Invalidation: two stores with near caches of their own (two "hosts": each near cache
has its own manager and tracking connection) on one server. Host A reads a key (so its
near cache holds it), host B overwrites it, and A's near cache is watched, in a tight
loop on its shared memory, until the copy is gone. Reported: the time from B's call
to the copy's removal, and from B's call returning, median and 99th percentile of
``--writes`` writes.

Run from the repository root:  python -m benchmarks.bench_nearcache [--repeat 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

from benchmarks import peers
from benchmarks.bench_stores import _keys

KEYS = 4096
VALUE_BYTES = 1536
PASSES = 5
NEAR_BYTES = 64 << 20


def _make(kind: str, path: str):
    import shmstore

    if kind == "SharedByteStore":
        return shmstore.SharedByteStore()
    near = NEAR_BYTES if kind == "near cache" else None
    return shmstore.RedisByteStore(
        f"unix://{path}", namespace=f"bench-{os.getpid()}", near_cache_bytes=near
    )


def reads(kind: str, path: str) -> dict[str, float]:
    store = _make(kind, path)
    try:
        keys = _keys(KEYS)
        values = [os.urandom(VALUE_BYTES) for _ in keys]
        for s in range(0, KEYS, 64):
            store.mset(list(zip(keys[s : s + 64], values[s : s + 64], strict=True)))
        for s in range(0, KEYS, 64):
            assert store.mget(keys[s : s + 64]) == values[s : s + 64]  # fills a near cache
        t = time.perf_counter()
        for _ in range(PASSES):
            for s in range(0, KEYS, 64):
                store.mget(keys[s : s + 64])
        batched = KEYS * PASSES / (time.perf_counter() - t)
        t = time.perf_counter()
        for k in keys:
            store.mget([k])
        single = (time.perf_counter() - t) / KEYS * 1e6
        return {"batched mget keys/s": batched, "1-key mget µs": single}
    finally:
        store.close()


def invalidation(path: str, writes: int) -> tuple[list[float], list[float]]:
    import shmstore

    url = f"unix://{path}"
    a = shmstore.RedisByteStore(url, namespace="inval", near_cache_bytes=1 << 20)
    b = shmstore.RedisByteStore(url, namespace="inval", near_cache_bytes=1 << 20)
    from_call, from_return = [], []
    try:
        near = a.near_cache
        assert near is not None
        for i in range(writes):
            value = b"%d" % i
            b.mset([("k", value)])
            # A's fill is refused until B's invalidation has reached A: read until held.
            while near.get(["k"]) != [value]:
                assert a.mget(["k"]) == [value]
            start = time.perf_counter()
            b.mset([("k", b"next")])
            returned = time.perf_counter()
            while near.get(["k"]) != [None]:
                pass
            gone = time.perf_counter()
            from_call.append((gone - start) * 1e6)
            from_return.append(max(0.0, gone - returned) * 1e6)
    finally:
        a.close()
        b.close()
    return from_call, from_return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--writes", type=int, default=500)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    kinds = ["SharedByteStore", "near cache", "Redis, no near cache"]
    rounds: peers.Rounds = {k: [] for k in kinds}
    with peers.redis_server() as path:
        for r in range(args.repeat):
            for kind in kinds[r % 3 :] + kinds[: r % 3]:
                with ctx.Pool(1) as pool:
                    rounds[kind].append(pool.apply(reads, (kind, path)))
        from_call, from_return = invalidation(path, args.writes)
    print(f"Repeated reads, medians of {args.repeat} rounds ({KEYS} keys of {VALUE_BYTES} B)\n")
    peers.print_table(
        peers.medians(rounds), kinds,
        lambda m, row: row[0] / row[1] if m.endswith("µs") else row[1] / row[0],
        "near / SharedByteStore",
    )
    print("\n(ratio: the near cache's throughput over SharedByteStore's; above 1 is faster)\n")

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]

    print(f"Another host's write reaching this near cache, {args.writes} writes, µs\n")
    print("| measured from | median | p99 |")
    print("|---|---|---|")
    for name, xs in (("the writer's call", from_call), ("its return", from_return)):
        print(f"| {name} | {statistics.median(xs):,.0f} | {pct(xs, 0.99):,.0f} |")


if __name__ == "__main__":
    main()
