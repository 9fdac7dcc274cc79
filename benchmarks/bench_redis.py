"""shmstore's Redis store beside LangChain's own (``langchain_community.storage.
RedisStore``), on the same server and workload, in one run (issue 11).

One redis-server (Debian's, on a unix socket, no persistence; redis-py with hiredis),
started by the benchmark. Workload as ``bench_stores``: 20,000 keys of 45 characters
with 1,536-byte values in batches of 64, ``mset`` then ``mget`` throughput, single-key
``mget`` latency, a listing of every key (``yield_keys``), and 4 processes at once,
1 batch in 5 an overwrite, over 4,096 keys. Each figure is measured in a spawned
worker, the median of ``--repeat`` rounds, the two stores taking turns on a flushed
server. Then the semantics where the two differ, checked on the same server.

Run from the repository root:  python -m benchmarks.bench_redis [--repeat 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import time
import warnings

from benchmarks import peers
from benchmarks.bench_stores import _keys

KEYS = 20_000
VALUE_BYTES = 1536
MIXED_KEYS = 4096
MIXED_BATCHES = 600


def _make(kind: str, path: str, namespace: str):
    if kind == "shmstore":
        import shmstore

        return shmstore.RedisByteStore(f"unix://{path}", namespace=namespace)
    warnings.simplefilter("ignore")
    from langchain_community.storage import RedisStore

    return RedisStore(redis_url=f"unix://{path}", namespace=namespace)


def single_run(kind: str, path: str) -> dict[str, float]:
    store = _make(kind, path, "bench")
    keys = _keys(KEYS)
    values = [os.urandom(VALUE_BYTES) for _ in keys]
    pairs = list(zip(keys, values, strict=True))
    figures = {}
    t = time.perf_counter()
    for s in range(0, KEYS, 64):
        store.mset(pairs[s : s + 64])
    figures["mset keys/s"] = KEYS / (time.perf_counter() - t)
    t = time.perf_counter()
    for s in range(0, KEYS, 64):
        got = store.mget(keys[s : s + 64])
    figures["mget keys/s"] = KEYS / (time.perf_counter() - t)
    assert got == values[-len(got) :]
    t = time.perf_counter()
    for k in keys[:2000]:
        store.mget([k])
    figures["1-key mget µs"] = (time.perf_counter() - t) / 2000 * 1e6
    t = time.perf_counter()
    listed = list(store.yield_keys())
    figures["list 20k keys ms"] = (time.perf_counter() - t) * 1e3
    assert len(listed) == KEYS
    return figures


def mixed_run(kind: str, path: str, seed: int, barrier) -> tuple[float, float, int]:
    store = _make(kind, path, "mixed")
    rng = random.Random(seed)
    keys = _keys(MIXED_KEYS)
    value = os.urandom(VALUE_BYTES)
    plan = [rng.sample(keys, 64) for _ in range(MIXED_BATCHES)]
    barrier.wait()
    start = time.perf_counter()
    for i, ks in enumerate(plan):
        if i % 5 == 0:
            store.mset([(k, value) for k in ks])
        else:
            store.mget(ks)
    return start, time.perf_counter(), MIXED_BATCHES * 64


def semantics(path: str) -> list[tuple[str, str, str]]:
    """Where LangChain's RedisStore and InMemoryByteStore differ: each store's answer."""
    rows = []
    for kind in ("shmstore", "langchain"):
        store = _make(kind, path, f"sem-{kind}")
        store.mset([("foo", b"1"), ("f*", b"2"), ("b", b"3")])
        store.mset([("foo", b"4")])
        answers = [repr(list(store.yield_keys(prefix="fo"))), repr(list(store.yield_keys()))]
        try:
            store.mdelete([])
            answers.append("ok")
        except Exception as exc:
            answers.append(type(exc).__name__)
        rows.append(answers)
    names = ['yield_keys(prefix="fo")', "yield_keys() order", "mdelete([])"]
    return [(name, a, b) for name, a, b in zip(names, rows[0], rows[1], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import redis

    ctx = multiprocessing.get_context("spawn")
    rounds: peers.Rounds = {"shmstore": [], "langchain": []}
    with peers.redis_server() as path, redis.Redis(unix_socket_path=path) as client:
        with ctx.Pool(1) as one, ctx.Pool(4) as four:
            for r in range(args.repeat):
                for kind in ("shmstore", "langchain") if r % 2 == 0 else ("langchain", "shmstore"):
                    client.flushall()
                    figures = one.apply(single_run, (kind, path))
                    client.flushall()
                    figures["4 processes, 1 in 5 writes keys/s"] = _mixed(four, ctx, kind, path)
                    rounds[kind].append(figures)
        rows = semantics(path)
    print(f"Medians of {args.repeat} rounds, one redis-server on a unix socket\n")
    peers.print_table(
        peers.medians(rounds), ["shmstore", "langchain"],
        lambda m, row: row[1] / row[0] if m.endswith(("µs", "ms")) else row[0] / row[1],
        "ratio",
    )
    print("\n(ratio above 1: shmstore's store is faster)\n")
    print("| semantics | shmstore RedisByteStore | langchain_community RedisStore |")
    print("|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a} | {b} |")


def _mixed(pool, ctx, kind: str, path: str) -> float:
    with ctx.Manager() as manager:
        barrier = manager.Barrier(4)
        spans = pool.starmap(mixed_run, [(kind, path, seed, barrier) for seed in range(4)])
    start = min(s for s, _, _ in spans)
    end = max(e for _, e, _ in spans)
    return sum(n for _, _, n in spans) / (end - start)


if __name__ == "__main__":
    main()
