"""Snapshots (issue 12): saving and loading 1 GiB of 1,536-byte values, shmstore's
``save`` and ``SharedByteStore(snapshot=...)`` beside Redis's ``SAVE`` and a Redis
restart that loads that RDB file, on the same data and the same disk, in one run.

Data: 699,050 keys of 45 characters with 1,536-byte values (1 GiB of values), random
bytes (incompressible, as embeddings are). Save: the time ``store.save(path)`` and
``SAVE`` take (both fsync the file; Redis with its default settings, LZF compression
on, which these values defeat). Load: from starting the process (the manager, or
``redis-server``) until it serves the data: the store's constructor returning, or
Redis answering ``PING`` with ``loading:0``; an empty start of each is measured too.
Medians of ``--repeat`` rounds, the two taking turns; the files are in one directory
(``--dir``, default the system's temporary directory), and each file is written anew,
so both are measured from the page cache as a restart on the same machine would be.

Run from the repository root:  python -m benchmarks.bench_snapshot [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import peers
from benchmarks.bench_stores import _keys

VALUE_BYTES = 1536
KEYS = (1 << 30) // VALUE_BYTES
BATCH = 1024


def _data() -> tuple[list[str], bytes]:
    return _keys(KEYS), os.urandom(KEYS * VALUE_BYTES + 64)


def _values(pool: bytes, start: int, n: int) -> list[bytes]:
    size = VALUE_BYTES
    return [pool[i * size + i % 64 : (i + 1) * size + i % 64] for i in range(start, start + n)]


def shmstore_round(directory: str, keys: list[str], pool: bytes) -> dict[str, float]:
    import shmstore

    path = os.path.join(directory, "store.snap")
    with shmstore.SharedByteStore() as store:
        for s in range(0, KEYS, BATCH):
            values = _values(pool, s, min(BATCH, KEYS - s))
            store.mset(list(zip(keys[s : s + BATCH], values, strict=True)))
        t = time.perf_counter()
        store.save(path)
        save_s = time.perf_counter() - t
    t = time.perf_counter()
    with shmstore.SharedByteStore() as _empty:
        empty_s = time.perf_counter() - t
    t = time.perf_counter()
    with shmstore.SharedByteStore(snapshot=path) as loaded:
        load_s = time.perf_counter() - t
        assert loaded.stats().keys == KEYS
        assert loaded.mget([keys[-1]]) == _values(pool, KEYS - 1, 1)
    os.unlink(path)  # saved again as the store closed, untimed
    return {"save s": save_s, "load s": load_s, "empty start s": empty_s}


def redis_round(directory: str, keys: list[str], pool: bytes) -> dict[str, float]:
    import redis

    server = _RedisOnDisk(directory)
    server.start()
    try:
        client = redis.Redis(unix_socket_path=server.socket, socket_timeout=600)
        pipe = client.pipeline(transaction=False)
        for s in range(0, KEYS, BATCH):
            values = _values(pool, s, min(BATCH, KEYS - s))
            pipe.mset(dict(zip(keys[s : s + BATCH], values, strict=True)))
            pipe.execute()
        t = time.perf_counter()
        client.save()
        save_s = time.perf_counter() - t
        client.close()
    finally:
        server.stop()
    rdb = os.path.join(directory, "dump.rdb")
    held = rdb + ".held"
    os.replace(rdb, held)
    t = time.perf_counter()
    server.start()
    empty_s = time.perf_counter() - t
    server.stop()
    os.replace(held, rdb)
    t = time.perf_counter()
    server.start()
    load_s = time.perf_counter() - t
    try:
        client = redis.Redis(unix_socket_path=server.socket)
        assert client.dbsize() == KEYS
        client.close()
    finally:
        server.stop()
        os.unlink(rdb)
    return {"save s": save_s, "load s": load_s, "empty start s": empty_s}


class _RedisOnDisk:
    """redis-server with RDB files in ``directory`` (no automatic saves, no AOF)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "redis.sock")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self._process = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.socket,
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
             "--dir", self.directory],
            stdout=subprocess.DEVNULL,
        )
        while True:
            try:
                with redis.Redis(unix_socket_path=self.socket) as client:
                    if client.info("persistence")["loading"] == 0:
                        return
            except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                pass
            if self._process.poll() is not None:
                raise RuntimeError("redis-server exited")
            time.sleep(0.001)

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()  # no save at shutdown: that is not what is timed
            self._process.wait()
            self._process = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    missing = peers.RedisPeer.unavailable()
    if missing:
        raise SystemExit(missing)
    keys, pool = _data()
    directory = tempfile.mkdtemp(prefix="bench-snapshot-", dir=args.dir)
    rounds: peers.Rounds = {"shmstore": [], "Redis": []}
    try:
        for r in range(args.repeat):
            order = ("shmstore", "Redis") if r % 2 == 0 else ("Redis", "shmstore")
            for kind in order:
                run = shmstore_round if kind == "shmstore" else redis_round
                rounds[kind].append(run(directory, keys, pool))
                print(f"round {r + 1} {kind}: {rounds[kind][-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"1 GiB of {VALUE_BYTES}-byte values ({KEYS:,} keys), medians of {args.repeat} rounds\n")
    peers.print_table(
        peers.medians(rounds), ["shmstore", "Redis"], lambda m, row: row[1] / row[0],
        "ratio (Redis / shmstore)", digits=2,
    )
    print("\n(ratio above 1: shmstore is faster)")


if __name__ == "__main__":
    main()
