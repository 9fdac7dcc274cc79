"""The ``shmstore`` command (also ``python -m shmstore``)."""

from __future__ import annotations

import argparse
import itertools
import os
import sys


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="shmstore",
        description="shmstore: one key-value store shared by every process of a job.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
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
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    options = parser.parse_args(argv)
    return _embed(options)


if __name__ == "__main__":
    sys.exit(main())
