"""shmstore as a bounded cache (issue 10): hit ratio beside exact LRU, FIFO and Redis's
``allkeys-lru``, and the cost of SIEVE eviction, in one run.

Hit ratio: seeded Zipf traces (alpha 0.8, 0.99 and 1.2; ``--requests`` requests,
default 1,000,000, over 100,000 keys, popularity shuffled over the key ids), values of
1,536 bytes, the bound at 1%, 10% and 40% of the working set (keys and values). Each
trace is replayed as a cache is used: in batches of 64 requests, an ``mget``, then an
``mset`` of the misses. shmstore (``eviction_policy="sieve"``) and Redis (``maxmemory``
with ``allkeys-lru``, its default 5 samples; ``maxmemory`` set so that it holds as many
entries as the bound, from the bytes an entry was measured to take in that server)
replay it from 4 spawned processes, each taking every 4th batch; exact LRU and FIFO
(cachetools' ``LRUCache`` and ``FIFOCache`` with ``getsizeof``, in-process references)
replay the same batches in order. The figure is the miss ratio: misses / requests.

Cost: 20,000 keys of 45 characters and 1,536-byte values; batched (64) and single-key
``mget`` throughput with ``"sieve"`` over ``"none"`` (which is timed first alternates
between rounds), and ``mset`` of new keys into a
store at its bound (every batch evicts) over ``mset`` into an empty one, both with
``"sieve"``; medians of ``--repeat`` rounds, each in spawned worker processes, the two
stores taking turns.

Run from the repository root:  python -m benchmarks.bench_cache [--requests N] [--repeat 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time

import numpy as np

import shmstore
from benchmarks import peers
from benchmarks.bench_stores import _keys

N_KEYS = 100_000
VALUE_BYTES = 1536
BATCH = 64
PROCESSES = 4
ALPHAS = (0.8, 0.99, 1.2)
FRACTIONS = (0.01, 0.10, 0.40)


def _key(i: int) -> str:
    return f"obj:{i:010d}"


ENTRY_BYTES = len(_key(0)) + VALUE_BYTES
WORKING_SET = N_KEYS * ENTRY_BYTES


def zipf_trace(alpha: float, requests: int, seed: int = 1) -> np.ndarray:
    """Key ids of a Zipf(alpha) trace over N_KEYS keys, popularity rank shuffled."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, N_KEYS + 1) ** alpha
    ranks = rng.choice(N_KEYS, size=requests, p=weights / weights.sum())
    return rng.permutation(N_KEYS)[ranks]


def _batches(trace: np.ndarray) -> list[list[str]]:
    ids = trace.tolist()
    return [[_key(i) for i in ids[s : s + BATCH]] for s in range(0, len(ids), BATCH)]


def replay_reference(cache_cls, bound: int, trace: np.ndarray) -> float:
    """Miss ratio of an in-process cachetools cache replaying the trace's batches."""
    cache = cache_cls(maxsize=bound, getsizeof=lambda v: v)
    misses = 0
    for keys in _batches(trace):
        missed = [k for k in keys if cache.get(k) is None]
        misses += len(missed)
        for k in missed:
            cache[k] = ENTRY_BYTES
    return misses / len(trace)


def replay_worker(client_factory, handle, trace: np.ndarray, worker: int) -> tuple[int, int]:
    """Replay every PROCESSES-th batch from ``worker``; (requests, misses) seen."""
    client = client_factory(handle)
    value = os.urandom(VALUE_BYTES)
    requests = misses = 0
    for keys in _batches(trace)[worker::PROCESSES]:
        got = client.mget(keys)
        missed = [k for k, v in zip(keys, got, strict=True) if v is None]
        if missed:
            client.mset([(k, value) for k in dict.fromkeys(missed)])
        requests += len(keys)
        misses += len(missed)
    return requests, misses


def _shm_client(store):
    return store


def replay_shmstore(bound: int, trace: np.ndarray, ctx) -> float:
    with shmstore.SharedByteStore(max_store_bytes=bound, eviction_policy="sieve") as store:
        with ctx.Pool(PROCESSES) as pool:
            counts = pool.starmap(
                replay_worker, [(_shm_client, store, trace, w) for w in range(PROCESSES)]
            )
        stats = store.stats()
        assert stats.bytes <= bound
        assert stats.misses == sum(m for _, m in counts), "stats disagree with the workers"
    return sum(m for _, m in counts) / len(trace)


def replay_redis(bound: int, trace: np.ndarray, ctx) -> float:
    import redis

    peer = peers.RedisPeer()
    path = peer.start()
    try:
        client = redis.Redis(unix_socket_path=path)
        value = os.urandom(VALUE_BYTES)
        base = client.info("memory")["used_memory"]
        sample = 10_000
        for s in range(0, sample, 500):
            client.mset({f"calib:{i}": value for i in range(s, s + 500)})
        per_entry = (client.info("memory")["used_memory"] - base) / sample
        client.flushall()
        entries = bound / ENTRY_BYTES
        empty = client.info("memory")["used_memory"]
        client.config_set("maxmemory", int(empty + entries * per_entry))
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.close()
        with ctx.Pool(PROCESSES) as pool:
            counts = pool.starmap(
                replay_worker,
                [(peers.RedisPeer.connect, path, trace, w) for w in range(PROCESSES)],
            )
    finally:
        peer.stop()
    return sum(m for _, m in counts) / len(trace)


def hit_ratio_table(requests: int, ctx) -> list[tuple]:
    import cachetools

    redis_missing = peers.RedisPeer.unavailable()
    rows = []
    for alpha in ALPHAS:
        trace = zipf_trace(alpha, requests)
        for fraction in FRACTIONS:
            bound = int(WORKING_SET * fraction)
            row = (
                alpha,
                fraction,
                replay_shmstore(bound, trace, ctx),
                replay_reference(cachetools.LRUCache, bound, trace),
                replay_reference(cachetools.FIFOCache, bound, trace),
                None if redis_missing else replay_redis(bound, trace, ctx),
            )
            rows.append(row)
            print(_row(row), flush=True)
    if redis_missing:
        print(f"Redis left out: {redis_missing}")
    return rows


def _row(row) -> str:
    alpha, fraction, shm, lru, fifo, red = row
    redis_cell = "—" if red is None else f"{red:.4f}"
    ok = shm <= lru and (red is None or shm <= red)
    return (
        f"| {alpha} | {fraction:.0%} | {shm:.4f} | {lru:.4f} | {fifo:.4f} | {redis_cell} "
        f"| {'yes' if ok else 'NO'} |"
    )


# -- cost ---------------------------------------------------------------------------

COST_KEYS = 20_000


def read_cost(store) -> tuple[float, float]:
    """(batched mget keys/s, single-key mget µs) in this process."""
    keys = _keys(COST_KEYS)
    batches = [keys[i : i + 64] for i in range(0, len(keys), 64)]
    t = time.perf_counter()
    for ks in batches:
        store.mget(ks)
    batched = len(keys) / (time.perf_counter() - t)
    t = time.perf_counter()
    for k in keys[:5000]:
        store.mget([k])
    single = (time.perf_counter() - t) / 5000 * 1e6
    return batched, single


def write_cost(store, first: int) -> float:
    """mset keys/s of COST_KEYS new keys numbered from ``first``, batches of 64."""
    value = os.urandom(VALUE_BYTES)
    keys = _keys(first + COST_KEYS)[first:]
    t = time.perf_counter()
    for s in range(0, len(keys), 64):
        store.mset([(k, value) for k in keys[s : s + 64]])
    return len(keys) / (time.perf_counter() - t)


def cost_round(ctx, order: tuple[str, str] = ("none", "sieve")) -> dict[str, float]:
    value = os.urandom(VALUE_BYTES)
    pairs = [(k, value) for k in _keys(COST_KEYS)]
    full_bound = COST_KEYS * (45 + VALUE_BYTES)
    figures = {}
    with ctx.Pool(1) as pool:
        for policy in order:  # which goes first alternates between rounds
            with shmstore.SharedByteStore(eviction_policy=policy) as store:
                for s in range(0, len(pairs), 64):
                    store.mset(pairs[s : s + 64])
                figures[f"mget {policy}"], figures[f"1-key {policy}"] = pool.apply(
                    read_cost, (store,)
                )
        with shmstore.SharedByteStore(max_store_bytes=full_bound, eviction_policy="sieve") as s:
            figures["mset empty"] = pool.apply(write_cost, (s, 0))  # fills it to the bound
            figures["mset full"] = pool.apply(write_cost, (s, COST_KEYS))  # evicts each batch
            assert s.stats().evictions >= COST_KEYS
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("hit-ratio", "cost"))
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    print(f"shmstore {shmstore.__version__}, hot functions: {shmstore.IMPLEMENTATION}")
    if args.only != "cost":
        print(f"\nMiss ratio, {args.requests:,} requests over {N_KEYS:,} keys (lower is better)")
        print("| Zipf alpha | bound | shmstore SIEVE | exact LRU | FIFO | Redis allkeys-lru "
              "| at most LRU and Redis |")
        print("|---|---|---|---|---|---|---|")
        hit_ratio_table(args.requests, ctx)
    if args.only != "hit-ratio":
        rounds = [
            cost_round(ctx, ("none", "sieve") if r % 2 == 0 else ("sieve", "none"))
            for r in range(args.repeat)
        ]
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"\nCost of SIEVE, medians of {args.repeat} rounds")
        print("| figure | none | sieve | ratio | target |")
        print("|---|---|---|---|---|")
        print(f"| batched mget keys/s | {med['mget none']:,.0f} | {med['mget sieve']:,.0f} "
              f"| {med['mget sieve'] / med['mget none']:.2f} | >= 0.90 |")
        print(f"| 1-key mget µs | {med['1-key none']:.2f} | {med['1-key sieve']:.2f} "
              f"| {med['1-key none'] / med['1-key sieve']:.2f} | >= 0.90 |")
        print(f"| mset keys/s, empty vs full (sieve) | {med['mset empty']:,.0f} "
              f"| {med['mset full']:,.0f} | {med['mset full'] / med['mset empty']:.2f} "
              f"| >= 0.80 |")


if __name__ == "__main__":
    main()
