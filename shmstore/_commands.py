"""The ``shmstore`` commands that look inside running stores of this user: ``ls``,
``stats``, ``keys``, ``get``, ``put``, ``delete`` and ``stop``. Output for people is
drawn by ``rich`` (aligned tables, sizes such as ``12.3 MiB``); ``--json`` gives the
same facts for scripts. Each returns the process's exit code (see :data:`EXIT`).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ._errors import StoreNotFoundError
from ._runtime import default_runtime_dir, store_names
from ._store import SharedByteStore

__all__ = ["EXIT", "delete", "get", "keys", "ls", "put", "stats", "stop"]

#: The exit codes: 0 done; 1 no such store; 2 bad usage (argparse's); 3 no such key;
#: 4 any other error of a store.
EXIT = {"ok": 0, "no store": 1, "usage": 2, "no key": 3, "error": 4}


def _console() -> Any:
    from rich.console import Console

    return Console()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _attach(name: str, runtime_dir: str | None) -> SharedByteStore:
    return SharedByteStore.attach(name, runtime_dir=runtime_dir)


def ls(runtime_dir: str | None, as_json: bool) -> int:
    """The running stores of this user: name, keys, bytes, clients, age."""
    directory = runtime_dir or default_runtime_dir()
    rows = []
    for name in store_names(directory):
        try:
            with _attach(name, directory) as store:
                s, info = store.stats(), store.info()
        except StoreNotFoundError:
            continue  # stopped while we looked, or a stale socket
        rows.append(
            {
                "name": name,
                "keys": s.keys,
                "bytes": s.bytes,
                "max_bytes": s.max_bytes,
                "clients": info["clients"] - 1,  # not counting this command
                "age_s": round(time.time() - info["started"] / 1e9, 1),
                "pid": info["pid"],
                "snapshot": info["snapshot"],
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT["ok"]
    from rich.table import Table

    table = Table(title=f"stores in {directory}", title_justify="left")
    for column in ("name", "keys", "bytes", "clients", "age", "snapshot"):
        table.add_column(column, justify="left" if column in ("name", "snapshot") else "right")
    for r in rows:
        table.add_row(
            r["name"], f"{r['keys']:,}", _size(r["bytes"]), str(r["clients"]),
            _age(r["age_s"]), r["snapshot"] or "",
        )
    _console().print(table)
    return EXIT["ok"]


def _stats_dict(store: SharedByteStore) -> dict[str, Any]:
    s = store.stats()
    return {**s._asdict(), "hit_ratio": s.hit_ratio}


def _stats_table(name: str, data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"store {name}", title_justify="left", show_header=False)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if key in ("bytes", "max_bytes"):
            shown = _size(value)
        elif key == "hit_ratio":
            shown = "-" if value is None else f"{value:.1%}"
        else:
            shown = f"{value:,}"
        table.add_row(key, shown)
    return table


def stats(name: str, runtime_dir: str | None, as_json: bool, watch_s: float | None) -> int:
    """A store's :class:`~shmstore.StoreStats`, once or refreshed every ``watch_s``."""
    with _attach(name, runtime_dir) as store:
        if as_json:
            print(json.dumps(_stats_dict(store)))
            return EXIT["ok"]
        if watch_s is None:
            _console().print(_stats_table(name, _stats_dict(store)))
            return EXIT["ok"]
        from rich.live import Live

        with Live(_stats_table(name, _stats_dict(store)), console=_console()) as live:
            try:
                while True:
                    time.sleep(watch_s)  # a refresh interval, for a person to watch
                    live.update(_stats_table(name, _stats_dict(store)))
            except KeyboardInterrupt:
                pass
    return EXIT["ok"]


def keys(
    name: str, runtime_dir: str | None, prefix: str | None, limit: int | None, as_json: bool
) -> int:
    """The store's keys, in insertion order, one per line."""
    with _attach(name, runtime_dir) as store:
        found: list[str] = []
        for key in store.yield_keys(prefix=prefix):
            if limit is not None and len(found) >= limit:
                break
            found.append(key)
    if as_json:
        print(json.dumps(found))
    else:
        for key in found:
            print(key)
    return EXIT["ok"]


def get(name: str, runtime_dir: str | None, key: str) -> int:
    """The value of ``key``, as raw bytes on stdout."""
    with _attach(name, runtime_dir) as store:
        (value,) = store.mget([key])
    if value is None:
        print(f"shmstore: store {name!r} has no key {key!r}", file=sys.stderr)
        return EXIT["no key"]
    sys.stdout.buffer.write(value)
    sys.stdout.flush()
    return EXIT["ok"]


def put(name: str, runtime_dir: str | None, key: str, value: str) -> int:
    """Set ``key`` to ``value`` (UTF-8), or to stdin's bytes if ``value`` is ``-``."""
    data = sys.stdin.buffer.read() if value == "-" else value.encode("utf-8", "surrogateescape")
    with _attach(name, runtime_dir) as store:
        store.mset([(key, data)])
    return EXIT["ok"]


def delete(name: str, runtime_dir: str | None, key_list: list[str]) -> int:
    """Delete the keys (missing ones are ignored)."""
    with _attach(name, runtime_dir) as store:
        store.mdelete(key_list)
    return EXIT["ok"]


def stop(name: str, runtime_dir: str | None) -> int:
    """Stop the store (its manager saves its snapshot first, if it has one)."""
    _attach(name, runtime_dir).stop()
    return EXIT["ok"]
