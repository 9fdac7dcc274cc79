"""A bounded cache: SIEVE eviction against a reference written plainly here, on every
data path and both implementations; the bound under concurrent writers; and the
container case, a 64 MiB /dev/shm filled by CacheBackedEmbeddings."""

from __future__ import annotations

import multiprocessing
import textwrap

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import shmstore
from tests import _workers

BOUND = 600


def _size(key: str, value: bytes) -> int:
    return len(key.encode("utf-8", "surrogatepass")) + len(value)


class ReferenceSieve:
    """SIEVE as the paper gives it (Zhang et al., NSDI 2024, Algorithm 1), over a dict
    whose order is the queue (tail first), with the store's two rules: an overwrite
    keeps its key's place and bit, and a batch's own keys are passed over."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.data: dict[str, bytes] = {}
        self.visited: dict[str, bool] = {}
        self.hand: str | None = None  # None: the tail
        self.evictions = 0

    def bytes(self) -> int:
        return sum(_size(k, v) for k, v in self.data.items())

    def mget(self, keys):
        out = []
        for k in keys:
            if k in self.data:
                self.visited[k] = True
            out.append(self.data.get(k))
        return out

    def mset(self, pairs) -> bool:
        """Whether the batch was applied (False: larger than the bound by itself)."""
        final = dict(pairs)
        if sum(_size(k, v) for k, v in final.items()) > self.max_bytes:
            return False
        growth = sum(
            _size(k, v) - (_size(k, self.data[k]) if k in self.data else 0)
            for k, v in final.items()
        )
        while self.bytes() + growth > self.max_bytes:
            self._evict(protected=final)
        for k, v in pairs:
            if k not in self.data:
                self.visited[k] = False
            self.data[k] = v
        return True

    def _evict(self, protected) -> None:
        queue = list(self.data)
        i = queue.index(self.hand) if self.hand is not None else 0
        while True:
            k = queue[i]
            if k in protected:
                i = (i + 1) % len(queue)
            elif self.visited[k]:
                self.visited[k] = False
                i = (i + 1) % len(queue)
            else:
                break
        self.hand = queue[i + 1] if i + 1 < len(queue) else None
        self.evictions += 1
        del self.data[k], self.visited[k]

    def mdelete(self, keys) -> None:
        for k in keys:
            if k in self.data:
                if k == self.hand:
                    queue = list(self.data)
                    i = queue.index(k)
                    self.hand = queue[i + 1] if i + 1 < len(queue) else None
                del self.data[k], self.visited[k]

    def yield_keys(self, prefix=None):
        return [k for k in self.data if not prefix or k.startswith(prefix)]


# A dozen keys or so and values of a few sizes: about six entries fit in BOUND, so
# most batches evict.
keys = st.one_of(
    st.sampled_from(_workers.AWKWARD_KEYS[:6] + [f"k{i}" for i in range(8)]),
    st.text(max_size=2),
)
values = st.builds(
    lambda n, b: bytes([b]) * n, st.sampled_from([0, 40, 90, 150]), st.integers(0, 255)
)


class SieveMachine(RuleBasedStateMachine):
    store = None  # one store for every run: an emptied store's SIEVE hand is at its tail
    before = None

    @initialize()
    def empty_both(self):
        cls = type(self)
        if cls.store is None:
            cls.store = shmstore.SharedByteStore(max_store_bytes=BOUND, eviction_policy="sieve")
        self.store.mdelete(list(self.store.yield_keys()))
        self.before = self.store.stats()
        self.reference = ReferenceSieve(BOUND)
        self.asked = self.found = 0

    @rule(ks=st.lists(keys, max_size=6))
    def mget(self, ks):
        got = self.store.mget(ks)
        assert got == self.reference.mget(ks)
        self.asked += len(ks)
        self.found += sum(v is not None for v in got)

    @rule(pairs=st.lists(st.tuples(keys, values), max_size=6))
    def mset(self, pairs):
        if self.reference.mset(pairs):
            self.store.mset(pairs)
            # The batch's own keys are all there: it evicted none of itself (listing
            # them sets no visited bit).
            assert {k for k, _ in pairs} <= set(self.store.yield_keys())
        else:
            with pytest.raises(shmstore.StoreTooLargeError):
                self.store.mset(pairs)

    @rule(ks=st.lists(keys, max_size=4))
    def mdelete(self, ks):
        self.store.mdelete(ks)
        self.reference.mdelete(ks)

    @rule(prefix=st.one_of(st.none(), keys))
    def yield_keys(self, prefix):
        assert list(self.store.yield_keys(prefix=prefix)) == self.reference.yield_keys(prefix)

    @invariant()
    def same_size_and_counts(self):
        if self.before is None:
            return
        stats = self.store.stats()
        assert stats.bytes == self.reference.bytes() <= BOUND
        assert stats.keys == len(self.reference.data)
        assert stats.evictions - self.before.evictions == self.reference.evictions
        assert stats.hits - self.before.hits == self.found
        assert stats.misses - self.before.misses == self.asked - self.found

    @classmethod
    def close_store(cls):
        if cls.store is not None:
            cls.store.close()
            cls.store = None


def test_sieve_matches_the_reference(data_path, implementation):
    try:
        SieveMachine.TestCase.settings = settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        SieveMachine.TestCase().runTest()
    finally:
        SieveMachine.close_store()


def test_sieve_passes_over_visited_entries_in_insertion_order(implementation):
    with shmstore.SharedByteStore(max_store_bytes=1000, eviction_policy="sieve") as store:
        store.mset([(f"k{i}", b"x" * 198) for i in range(5)])  # 200 bytes each: full
        store.mget(["k0", "k2"])
        store.mset([("n0", b"y" * 198)])  # k0 visited: passed over; k1 evicted
        store.mset([("n1", b"y" * 198)])  # k2 visited: passed over; k3 evicted
        assert list(store.yield_keys()) == ["k0", "k2", "k4", "n0", "n1"]
        assert store.stats().evictions == 2


def test_one_batch_over_the_bound_still_raises_and_applies_nothing():
    with shmstore.SharedByteStore(max_store_bytes=1000, eviction_policy="sieve") as store:
        store.mset([("keep", b"x" * 100)])
        with pytest.raises(shmstore.StoreTooLargeError, match="max_store_bytes=1000"):
            store.mset([("a", b"x" * 600), ("b", b"x" * 600)])
        assert store.mget(["keep", "a", "b"]) == [b"x" * 100, None, None]


def test_without_eviction_a_full_store_still_raises():
    with shmstore.SharedByteStore(max_store_bytes=1000) as store:
        store.mset([("a", b"x" * 900)])
        with pytest.raises(shmstore.StoreTooLargeError):
            store.mset([("b", b"x" * 200)])
        assert store.mget(["a", "b"]) == [b"x" * 900, None]
        assert store.stats().evictions == 0


def test_unknown_eviction_policy_is_refused():
    with pytest.raises(ValueError, match="eviction_policy"):
        shmstore.SharedByteStore(eviction_policy="lru")


def test_bound_holds_under_concurrent_writers_and_batches_stay_whole(implementation):
    """Writers from several processes overwrite their own groups of keys, a round tag
    in every value, into a store a tenth the size of what they write; after every
    acknowledged batch the store is within its bound, and a reader never sees two
    rounds of one group at once (evicted keys read as missing)."""
    bound = 64 << 10
    ctx = multiprocessing.get_context("spawn")
    with shmstore.SharedByteStore(max_store_bytes=bound, eviction_policy="sieve") as store:
        done = ctx.Event()
        results = ctx.Queue()
        writers = [
            ctx.Process(target=_workers.bounded_writer, args=(store, w, 300, results))
            for w in range(3)
        ]
        reader = ctx.Process(target=_workers.group_reader, args=(store, 3, done, results))
        for p in (*writers, reader):
            p.start()
        for p in writers:
            p.join(120)
        done.set()
        reader.join(60)
        reports = [results.get(timeout=10) for _ in range(4)]
        assert all(p.exitcode == 0 for p in (*writers, reader))
        assert sorted(reports) == ["over bound: 0"] * 3 + ["torn groups: 0"]
        stats = store.stats()
        assert stats.bytes <= bound and stats.evictions > 0


# The container case: Docker's default /dev/shm is 64 MiB. CacheBackedEmbeddings
# stores each 384-dimension vector as JSON, about 7.9 kB.
_CONTAINER = textwrap.dedent(
    """
    import os, random, shmstore
    from langchain_classic.embeddings import CacheBackedEmbeddings
    from langchain_core.embeddings import Embeddings

    class Fake(Embeddings):  # the model's shape and JSON size, not its time
        def embed_documents(self, texts):
            return [[r.random() for _ in range(384)] for r in map(random.Random, texts)]
        def embed_query(self, text):
            return self.embed_documents([text])[0]

    bound = 40 << 20
    with shmstore.SharedByteStore(max_store_bytes=bound, eviction_policy="sieve") as store:
        cached = CacheBackedEmbeddings.from_bytes_store(Fake(), store, namespace="m")
        texts = [f"chunk {i}" for i in range(20_000)]
        for start in range(0, len(texts), 100):
            cached.embed_documents(texts[start : start + 100])
            assert store.stats().bytes <= bound
        stats = store.stats()
        assert stats.evictions > 0, stats
        last = texts[-100:]
        hits_before = store.stats().hits
        cached.embed_documents(last)  # the latest chunks are still cached
        assert store.stats().hits - hits_before == 100
        print("ok", stats.keys, stats.evictions)
    assert os.listdir("/dev/shm") == [], os.listdir("/dev/shm")
    """
)


def test_container_with_64_mib_of_shared_memory_keeps_caching(tmp_path):
    done = _workers.run_with_private_shm(_CONTAINER, "64m", tmp_path, timeout_s=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "ok"
