"""The ``shmstore`` command (also ``python -m shmstore``)."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Any


def _embed(options: argparse.Namespace) -> int:
    try:
        from .embed import directory_chunks, run_job, stdlib_chunks
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(
            f"shmstore embed needs the embed extra: pip install 'shmstore[embed]' ({exc})",
            file=sys.stderr,
        )
        return 2
    chunks = (
        directory_chunks(options.corpus, chunk_chars=options.chunk_chars)
        if options.corpus
        else stdlib_chunks(chunk_chars=options.chunk_chars)
    )
    if options.limit is not None:
        chunks = itertools.islice(chunks, options.limit)
    summary = run_job(
        chunks,
        workers=options.workers,
        passes=options.passes,
        batch_size=options.batch_size,
        output=options.output,
        progress=not options.quiet,
        max_cache_bytes=options.max_cache_bytes,
        store_url=options.store,
        near_cache_bytes=options.near_cache_bytes,
        cache_file=options.cache,
    )
    print(summary.render())
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40, "t": 1000**4, "tb": 1000**4,
}


def parse_size(text: str) -> int:
    """A size in bytes from ``"4096"``, ``"64MiB"``, ``"1.5 GB"`` (SI units are powers
    of 1000, IEC units of 1024; case ignored).

    :raises argparse.ArgumentTypeError: not a size, or below 1 byte.
    """
    number = text.strip().rstrip("bBiIkKmMgGtT ")
    unit = text.strip()[len(number) :].strip().lower()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (examples: 4096, 64MiB, 1.5GB)"
        ) from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text!r}")
    return int(value)


_EPILOG = """exit codes: 0 done, 1 no such store, 2 bad usage, 3 no such key (get),
4 any other error of a store"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shmstore",
        description="shmstore: one key-value store shared by every process of a job.",
        epilog=_EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_embed(commands)
    _add_store_commands(commands)
    options = parser.parse_args(argv)
    if options.command == "embed":
        return _run_reporting_errors(_embed, options)
    return _run_reporting_errors(_store_command, options)


def _run_reporting_errors(command: Any, options: argparse.Namespace) -> int:
    """Run a command; a store's error becomes one line on stderr and its exit code."""
    from ._commands import EXIT
    from ._errors import StoreError, StoreNotFoundError

    try:
        code: int = command(options)
        return code
    except StoreNotFoundError as exc:
        print(f"shmstore: {exc}", file=sys.stderr)
        return EXIT["no store"]
    except (StoreError, ValueError) as exc:
        print(f"shmstore: {exc}", file=sys.stderr)
        return EXIT["error"]
    except ImportError as exc:  # pragma: no cover - depends on the install
        print(f"shmstore: needs the cli extra: pip install 'shmstore[cli]' ({exc})",
              file=sys.stderr)
        return EXIT["usage"]


def _store_command(options: argparse.Namespace) -> int:
    from . import _commands as c

    name: str = getattr(options, "name", "")
    where: str | None = options.runtime_dir
    command = options.command
    if command == "serve":
        from ._serve import serve

        return serve(name, where, _serve_options(options))
    if command == "ls":
        return c.ls(where, options.json)
    if command == "stats":
        return c.stats(name, where, options.json, options.watch)
    if command == "keys":
        return c.keys(name, where, options.prefix, options.limit, options.json)
    if command == "get":
        return c.get(name, where, options.key)
    if command == "put":
        return c.put(name, where, options.key, options.value)
    if command == "delete":
        return c.delete(name, where, options.keys)
    assert command == "stop"
    return c.stop(name, where)


def _serve_options(options: argparse.Namespace) -> dict[str, Any]:
    chosen: dict[str, Any] = {
        "max_store_bytes": options.max_bytes,
        "eviction_policy": options.eviction_policy,
        "ttl_s": options.ttl,
        "snapshot": options.snapshot,
        "snapshot_every_s": options.snapshot_every,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def _add_store_commands(commands: Any) -> None:
    def command(name: str, help: str, *, named: bool = True, json: bool = False) -> Any:
        sub = commands.add_parser(name, help=help, description=help, epilog=_EPILOG)
        if named:
            sub.add_argument("name", help="the store's name")
        sub.add_argument(
            "--runtime-dir", default=None,
            help="the stores' directory (default: as the stores choose it)",
        )
        if json:
            sub.add_argument("--json", action="store_true", help="JSON, for scripts")
        return sub

    serve = command("serve", "run a store of its own until Ctrl-C, SIGTERM or `stop`")
    serve.add_argument("--max-bytes", type=parse_size, metavar="SIZE",
                       help="bound on its keys and values (e.g. 1GiB)")
    serve.add_argument("--eviction-policy", choices=["none", "sieve"],
                       help="what a write past --max-bytes does (default none: it fails)")
    serve.add_argument("--ttl", type=_positive_seconds, metavar="SECONDS",
                       help="default time to live of each write")
    serve.add_argument("--snapshot", metavar="FILE",
                       help="load from FILE if it exists; save to it when stopped")
    serve.add_argument("--snapshot-every", type=_positive_seconds, metavar="SECONDS",
                       help="also save to --snapshot every SECONDS")
    command("ls", "the running stores of this user", named=False, json=True)
    stats = command("stats", "a store's statistics", json=True)
    stats.add_argument("--watch", type=_positive_seconds, nargs="?", const=1.0,
                       metavar="SECONDS", help="refresh every SECONDS (default 1) until Ctrl-C")
    keys = command("keys", "a store's keys, in insertion order", json=True)
    keys.add_argument("--prefix", default=None, help="only keys that start with this")
    keys.add_argument("--limit", type=_positive, default=None, help="at most this many")
    get = command("get", "write a key's value to stdout")
    get.add_argument("key")
    put = command("put", "set a key")
    put.add_argument("key")
    put.add_argument("value", help="the value (UTF-8), or - to read it from stdin")
    delete = command("delete", "delete keys")
    delete.add_argument("keys", nargs="+", metavar="KEY")
    command("stop", "stop a store (it saves its snapshot first, if it has one)")


def _add_embed(commands: Any) -> None:
    embed = commands.add_parser(
        "embed",
        help="embed a corpus with worker processes sharing one embedding cache",
        description="Embed real text with all-MiniLM-L6-v2 in N worker processes that "
        "share one CacheBackedEmbeddings cache in a SharedByteStore. Default corpus: "
        "the docstrings of the installed Python standard library.",
    )
    embed.add_argument(
        "--workers",
        type=_positive,
        default=os.cpu_count() or 1,
        help="worker processes (default: one per core)",
    )
    embed.add_argument(
        "--passes",
        type=_positive,
        default=2,
        help="passes over the corpus; the 2nd is served by the cache (default 2)",
    )
    embed.add_argument(
        "--limit", type=_positive, default=None, help="embed only the first N chunks (default: all)"
    )
    embed.add_argument(
        "--corpus",
        metavar="DIR",
        default=None,
        help="a directory of .txt/.md/.rst files instead of the stdlib docstrings",
    )
    embed.add_argument(
        "--output",
        metavar="DIR",
        default="shmstore-embeddings",
        help="where to write embeddings.npy, chunks.jsonl, summary.json "
        "(default ./shmstore-embeddings)",
    )
    embed.add_argument("--batch-size", type=_positive, default=32, help="chunks per task")
    embed.add_argument(
        "--chunk-chars",
        type=_positive,
        default=600,
        help="longest chunk in characters (default 600)",
    )
    embed.add_argument(
        "--max-cache-bytes",
        type=parse_size,
        metavar="SIZE",
        default=None,
        help="bound the shared cache (e.g. 64MiB, or bytes), evicting by SIEVE "
        "(default: unbounded)",
    )
    embed.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="share the cache in this store instead of a new local one: shm://NAME, or "
        "redis://host:6379/0?namespace=NS (several hosts, one cache)",
    )
    embed.add_argument(
        "--near-cache-bytes",
        type=parse_size,
        metavar="SIZE",
        default=None,
        help="with a Redis --store: keep a near cache of this size in this host's "
        "shared memory (e.g. 256MiB)",
    )
    embed.add_argument(
        "--cache",
        metavar="FILE",
        default=None,
        help="load the cache from this snapshot file if it exists, and save it there at "
        "the end, so the next run embeds only what is new",
    )
    embed.add_argument("--quiet", action="store_true", help="no progress bar")


if __name__ == "__main__":
    sys.exit(main())
