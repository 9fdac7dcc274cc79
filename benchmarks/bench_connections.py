"""Throughput with many connections: 16 processes making requests to the manager, first
through 1 connection each, then through 13 each (208 in all, used in turn), for a fixed
time. Requests are batched msets of 16 small values and key listings, so every call is
served by the manager. Prints requests/s for both and their ratio (medians of --repeat).

Run from the repository root:  python -m benchmarks.bench_connections [--repeat 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

import shmstore

PROCESSES = 16
SECONDS = 3.0


def _client(name: str, connections: int, barrier, results) -> None:
    proxies = [shmstore.SharedByteStore.attach(name) for _ in range(connections)]
    barrier.wait()
    requests, n = 0, 0
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        proxy = proxies[n % connections]
        proxy.mset([(f"c{n % 64}:{i}", b"x" * 64) for i in range(16)])
        requests += 1
        n += 1
    results.put(requests)
    for proxy in proxies:
        proxy.close()


def run(connections: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.SimpleQueue()
    with shmstore.SharedByteStore() as store:
        clients = [
            ctx.Process(target=_client, args=(store.name, connections, barrier, results))
            for _ in range(PROCESSES)
        ]
        for client in clients:
            client.start()
        total = sum(results.get() for _ in clients)
        for client in clients:
            client.join()
    return total / SECONDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    repeat = parser.parse_args().repeat
    few = statistics.median(run(1) for _ in range(repeat))
    many = statistics.median(run(13) for _ in range(repeat))
    print(f"{PROCESSES} connections: {few:,.0f} requests/s")
    print(f"{PROCESSES * 13} connections: {many:,.0f} requests/s ({many / few:.2f}x)")


if __name__ == "__main__":
    main()
