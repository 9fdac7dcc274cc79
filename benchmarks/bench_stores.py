"""Time shmstore beside the stores a user would pick instead, in one run.

Workload (from CONTEXT.md): 20,000 keys of 45 characters with 1,536-byte values (a
384-float embedding), in batches of 64: ``mset`` then ``mget`` throughput; single-key
``mget`` latency; 64 values of 1 MiB in batches of 4; 4 processes reading all keys in
batches of 64 at once. The mixed load a cache sees (issue 9): 4 processes over 4,096
keys, batches of 64 of random keys, 1 batch in 5 (and 1 in 2) an overwrite, the rest
reads; 4 processes only overwriting, beside 1 doing the same, with the CPU time the
server process spends per batch in each (for the stores that have one); and the memory
held at 200,000 values. For shmstore the proxies also count their direct reads that read again
because a write overlapped their keys, and those given up to the manager.

Every figure is measured in worker processes (spawned), never in the process that
started the store; the single-client figures each in a process of its own, since the
1 MiB reads depend on the state of the C library's heap, which a pool worker has from
whatever ran in it before. Each is the median of ``--repeat`` rounds (default 5), each on a
freshly started store, the peers taking turns within each round, in an order that
turns by one each round. Ratios are shmstore's figure over the peer's, so above 1 means
shmstore is faster, for latency too.

Run from the repository root:  python -m benchmarks.bench_stores [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time

import shmstore
from benchmarks import peers

KEY_CHARS = 45
VALUE_BYTES = 1536
BIG_VALUE_BYTES = 1 << 20
READERS = 4

_BARRIER = None


def _keys(n: int) -> list[str]:
    return [f"embedding:{i:012d}:".ljust(KEY_CHARS, "x") for i in range(n)]


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _init_worker(barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


def one_process_run(peer_cls, handle, n_keys: int, batch: int, single: int, n_big: int):
    """All single-client workloads on one client; returns their figures."""
    client = peer_cls.connect(handle)
    keys = _keys(n_keys)
    # A distinct value per key: pickle sends an object repeated within one message only
    # once, which would flatter the pickle-based peers on repeated values.
    values = [os.urandom(VALUE_BYTES) for _ in keys]
    pair_batches = _batches(list(zip(keys, values, strict=True)), batch)
    key_batches = _batches(keys, batch)
    figures = {}

    t = time.perf_counter()
    for pairs in pair_batches:
        client.mset(pairs)
    figures["mset keys/s"] = n_keys / (time.perf_counter() - t)

    t = time.perf_counter()
    for ks in key_batches:
        got = client.mget(ks)
    figures["mget keys/s"] = n_keys / (time.perf_counter() - t)
    assert got == values[-len(got) :], "mget returned wrong values"

    one_key = [[k] for k in keys[:single]]
    t = time.perf_counter()
    for k in one_key:
        client.mget(k)
    figures["1-key mget µs"] = (time.perf_counter() - t) / single * 1e6

    big = {f"big:{i}": os.urandom(BIG_VALUE_BYTES) for i in range(n_big)}
    big_batches = _batches(list(big), 4)
    t = time.perf_counter()
    for ks in big_batches:
        client.mset([(k, big[k]) for k in ks])
    figures["1 MiB mset MB/s"] = n_big * BIG_VALUE_BYTES / 1e6 / (time.perf_counter() - t)
    t = time.perf_counter()
    for ks in big_batches:
        got = client.mget(ks)
    figures["1 MiB mget MB/s"] = n_big * BIG_VALUE_BYTES / 1e6 / (time.perf_counter() - t)
    assert got == [big[k] for k in big_batches[-1]], "mget returned wrong large values"
    return figures


def reader_run(peer_cls, handle, n_keys: int, batch: int):
    """One of READERS concurrent readers; returns (start, end, keys read)."""
    client = peer_cls.connect(handle)
    key_batches = _batches(_keys(n_keys), batch)
    _BARRIER.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    for ks in key_batches:
        client.mget(ks)
    return start, time.perf_counter(), n_keys


MIXED_KEYS = 4096
MIXED_OPS = 1500  # batches per process


def mixed_run(peer_cls, handle, write_every: int, seed: int):
    """One of READERS processes mixing batched reads and overwrites of random keys of
    MIXED_KEYS (``write_every``: 1 batch in that many is an ``mset``; 1: all are);
    returns (start, end, keys, (reads, retried, fell back) or None)."""
    import random

    client = peer_cls.connect(handle)
    rng = random.Random(seed)
    keys = _keys(MIXED_KEYS)
    values = [os.urandom(VALUE_BYTES) for _ in range(256)]
    plan = [rng.sample(keys, 64) for _ in range(MIXED_OPS)]
    before = client.read_counters() if hasattr(client, "read_counters") else None
    _BARRIER.wait()
    start = time.perf_counter()
    for i, ks in enumerate(plan):
        if i % write_every == 0:
            client.mset([(k, values[(i + j) & 255]) for j, k in enumerate(ks)])
        else:
            client.mget(ks)
    end = time.perf_counter()
    counters = None
    if before is not None:
        counters = tuple(a - b for a, b in zip(client.read_counters(), before, strict=True))
    return start, end, MIXED_OPS * 64, counters


def one_writer_run(peer_cls, handle, seed: int) -> float:
    """The 4-writer workload in one process alone: its keys/s."""
    import random

    client = peer_cls.connect(handle)
    rng = random.Random(seed)
    keys = _keys(MIXED_KEYS)
    values = [os.urandom(VALUE_BYTES) for _ in range(256)]
    plan = [rng.sample(keys, 64) for _ in range(MIXED_OPS)]
    start = time.perf_counter()
    for i, ks in enumerate(plan):
        client.mset([(k, values[(i + j) & 255]) for j, k in enumerate(ks)])
    return MIXED_OPS * 64 / (time.perf_counter() - start)


def load_values(peer_cls, handle, n_keys: int, batch: int) -> None:
    """Fill a store with ``n_keys`` distinct 1,536-byte values, for the memory figure."""
    client = peer_cls.connect(handle)
    pairs = [(k, os.urandom(VALUE_BYTES)) for k in _keys(n_keys)]
    for chunk in _batches(pairs, batch):
        client.mset(chunk)
    # Done with the store, as the job that filled it would be: what is measured is the
    # store holding the values, not a writer's buffers (shmstore's proxy keeps two
    # staging segments, 2 MiB, until it is closed or its process exits).
    peer_cls.disconnect(client)


def measure_memory(peer_cls, pool, n_keys: int, batch: int) -> float | None:
    """The peer's footprint holding ``n_keys`` values, as a multiple of their bytes."""
    peer = peer_cls()
    handle = peer.start()
    try:
        if not peer.shared:
            return None
        pool.apply(load_values, (peer_cls, handle, n_keys, batch))
        footprint = peer.footprint()
        return None if footprint is None else footprint / (n_keys * VALUE_BYTES)
    finally:
        peer.stop()


class _ServerCpu:
    """The CPU time a peer's server process (shmstore's manager, redis-server, the
    BaseManager's process) spends on a workload, per batch: a steadier figure than
    throughput on a machine whose speed drifts, and the one that bounds several writers
    on few cores. It includes the workers' connecting (a handshake each), not their
    preparing of the batches, during which the server is idle."""

    def __init__(self, peer) -> None:
        self._pid = peer.server_pid()
        self._start = None if self._pid is None else peers.cpu_seconds(self._pid)

    def record(self, figures: dict[str, float], label: str, batches: int) -> None:
        if self._pid is not None:
            used = peers.cpu_seconds(self._pid) - self._start
            figures[f"{label} server CPU per batch µs"] = used / batches * 1e6


def _in_fresh_process(function, args):
    """``function(*args)`` in a newly spawned process. A 1 MiB read copies into a new
    ``bytes``, whose memory comes fresh from the kernel (page faults) or from the C
    library's heap (none), by how that heap was left: in a reused pool worker, by what
    ran there before (LMDB's median over one run in reused workers: 5,669 MB/s; in fresh
    processes: 3,282-3,347), which would measure the order of the peers, not a store."""
    with multiprocessing.get_context("spawn").Pool(1) as fresh:
        return fresh.apply(function, args)


def measure(peer_cls, pool, args) -> dict[str, float]:
    peer = peer_cls()
    handle = peer.start()
    try:
        figures = _in_fresh_process(one_process_run, (peer_cls, handle, *args))
        if peer.shared:
            n_keys, batch = args[0], args[1]
            spans = pool.starmap(reader_run, [(peer_cls, handle, n_keys, batch)] * READERS)
            elapsed = max(end for _, end, _ in spans) - min(start for start, _, _ in spans)
            figures[f"{READERS} readers keys/s"] = sum(n for _, _, n in spans) / elapsed
            pool.apply(load_values, (peer_cls, handle, MIXED_KEYS, 64))
            for label, every in (("1 in 5 writes", 5), ("1 in 2 writes", 2), ("4 writers", 1)):
                used = _ServerCpu(peer)
                runs = pool.starmap(
                    mixed_run, [(peer_cls, handle, every, seed) for seed in range(READERS)]
                )
                if every == 1:
                    used.record(figures, "4 writers", READERS * MIXED_OPS)
                elapsed = max(r[1] for r in runs) - min(r[0] for r in runs)
                figures[f"{label} keys/s"] = sum(r[2] for r in runs) / elapsed
                counted = [r[3] for r in runs if r[3] is not None]
                if counted and every > 1:
                    reads = sum(c[0] for c in counted) or 1
                    figures[f"{label} retried %"] = 100 * sum(c[1] for c in counted) / reads
                    figures[f"{label} fell back %"] = 100 * sum(c[2] for c in counted) / reads
            used = _ServerCpu(peer)
            figures["1 writer keys/s"] = pool.apply(one_writer_run, (peer_cls, handle, 0))
            used.record(figures, "1 writer", MIXED_OPS)
        return figures
    finally:
        peer.stop()


def _format(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per peer (default 5)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the work, 1 run")
    parser.add_argument(
        "--only",
        metavar="TEXT",
        help="run only the stores whose name contains TEXT (shmstore is always run); "
        "with SHMSTORE_PUREPYTHON=1 in the environment, to time the pure-Python core",
    )
    options = parser.parse_args(argv)
    repeat = 1 if options.quick else options.repeat
    scale = 10 if options.quick else 1
    args = (20_000 // scale, 64, 2_000 // scale, 64 // scale)

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(READERS)
    available = []
    for peer_cls in peers.PEERS:
        wanted = not options.only or options.only in peer_cls.name
        if not wanted and peer_cls is not peers.ShmStorePeer:
            continue
        why = peer_cls.unavailable()
        if why:
            print(f"left out {peer_cls.name}: {why}")
        else:
            available.append(peer_cls)
    runs: dict[str, list[dict[str, float]]] = {p.name: [] for p in available}
    with ctx.Pool(READERS, initializer=_init_worker, initargs=(barrier,)) as pool:
        # Peers take turns within each round, so a drift in the machine's state (another
        # process, the CPU's clock) falls on all of them rather than on one; the order
        # turns by one each round, so no peer is always first, or always follows the
        # same one (whatever state that one leaves the machine in).
        for n in range(repeat):
            turn = n % len(available)
            for peer_cls in available[turn:] + available[:turn]:
                figures = measure(peer_cls, pool, args)
                memory = measure_memory(peer_cls, pool, args[0], args[1])
                if memory is not None:
                    figures["memory x payload"] = memory
                if n == 0:  # slow to fill for some peers, and steady: measured once
                    memory = measure_memory(peer_cls, pool, args[0] * 10, args[1])
                    if memory is not None:
                        figures["memory at 200k x payload"] = memory
                runs[peer_cls.name].append(figures)
            print(f"round {n + 1}/{repeat} done", flush=True)
    medians = {
        name: {m: statistics.median(r[m] for r in rs if m in r) for m in rs[0]}
        for name, rs in runs.items()
    }

    metrics = list(medians[peers.ShmStorePeer.name])
    ours = medians[peers.ShmStorePeer.name]
    core = getattr(shmstore, "IMPLEMENTATION", "-")
    if os.environ.get("SHMSTORE_PUREPYTHON"):
        core = "python"
    print(
        f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"medians of {repeat} run(s), {args[0]} keys; shmstore's core: {core}\n"
    )
    print("| store | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for name, figures in medians.items():
        print(f"| {name} | " + " | ".join(_format(figures.get(m)) for m in metrics) + " |")
    print("\nshmstore's advantage (x faster; above 1 is better):\n")
    print("| against | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for name, figures in medians.items():
        if name == peers.ShmStorePeer.name:
            continue
        cells = []
        for m in metrics:
            if m not in figures or m.endswith("%"):
                cells.append("—")
            elif m.endswith("µs") or m.startswith("memory"):
                cells.append(f"{figures[m] / ours[m]:.2f}")
            else:
                cells.append(f"{ours[m] / figures[m]:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    _print_targets(medians)


# The targets of issue 9: (what, metric, peer, factor). A throughput must reach factor x
# the peer's; a latency or a memory ratio must be at most factor x the peer's.
_THROUGHPUTS = [
    "mset keys/s",
    "mget keys/s",
    "1 MiB mset MB/s",
    "1 MiB mget MB/s",
    f"{READERS} readers keys/s",
    "1 in 5 writes keys/s",
    "1 in 2 writes keys/s",
    "4 writers keys/s",
]
TARGETS = [
    *[
        (f"{metric} >= {factor:g}x {peer.name}", metric, peer, factor)
        for metric in _THROUGHPUTS
        for peer, factor in (
            (peers.LmdbPeer, 1.0),
            (peers.RedisPeer, 2.0),
            (peers.BatchedBaseManagerPeer, 2.0),
        )
    ],
    ("1-key mget <= LMDB's time", "1-key mget µs", peers.LmdbPeer, 1.0),
    ("memory at 200k <= Redis's", "memory at 200k x payload", peers.RedisPeer, 1.0),
]


def _print_targets(medians: dict[str, dict[str, float]]) -> None:
    ours = medians[peers.ShmStorePeer.name]
    print("\ntargets:\n")
    print("| target | shmstore / peer | met |")
    print("|---|---|---|")
    for what, metric, peer_cls, factor in TARGETS:
        theirs = medians.get(peer_cls.name, {}).get(metric)
        if theirs is None or metric not in ours:
            print(f"| {what} | (not measured) | — |")
            continue
        ratio = ours[metric] / theirs
        lower_is_better = metric.endswith("µs") or metric.startswith("memory")
        met = ratio <= factor if lower_is_better else ratio >= factor
        print(f"| {what} | {ratio:.2f} | {'yes' if met else 'NO'} |")
    if "4 writers keys/s" in ours:
        ratio = ours["4 writers keys/s"] / ours["1 writer keys/s"]
        print(f"| 4 writers >= 1 writer | {ratio:.2f} | {'yes' if ratio >= 1 else 'NO'} |")
    memory = ours.get("memory at 200k x payload")
    if memory is not None:
        verdict = "yes" if memory <= 1.15 else "NO"
        print(f"| memory at 200k <= 1.15x payload | {memory:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
