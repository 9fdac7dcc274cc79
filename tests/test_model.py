"""Model-based tests: the same operations on a proxy and on LangChain's in-memory
reference give identical results, keys listed in the same order included."""

from __future__ import annotations

import multiprocessing

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from langchain_core.stores import InMemoryByteStore, InMemoryStore

import shmstore
from tests import _workers

keys = st.one_of(st.sampled_from(_workers.AWKWARD_KEYS), st.text(max_size=6))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


class _ModelMachine(RuleBasedStateMachine):
    """Drives one shared store and one reference with the same random operations."""

    store_cls: type
    reference_cls: type
    value_strategy = st.binary(max_size=48)
    store = None  # one store for every run of the machine: starting one per run is slow

    @initialize()
    def empty_both(self):
        if type(self).store is None:
            type(self).store = type(self).make_store()
        self.store.mdelete(list(self.store.yield_keys()))
        self.reference = self.reference_cls()

    @rule(ks=st.lists(keys, max_size=6))
    def mget(self, ks):
        assert self.store.mget(ks) == self.reference.mget(ks)

    @rule(data=st.data())
    def mset(self, data):
        pairs = data.draw(st.lists(st.tuples(keys, self.value_strategy), max_size=6))
        self.store.mset(pairs)
        self.reference.mset(pairs)

    @rule(ks=st.lists(keys, max_size=6))
    def mdelete(self, ks):
        self.store.mdelete(ks)
        self.reference.mdelete(ks)

    @rule(prefix=st.one_of(st.none(), keys))
    def yield_keys(self, prefix):
        assert list(self.store.yield_keys(prefix=prefix)) == list(
            self.reference.yield_keys(prefix=prefix)
        )

    @classmethod
    def close_store(cls):
        if cls.store is not None:
            cls.store.close()
            cls.store = None


class ByteStoreMachine(_ModelMachine):
    store_cls = shmstore.SharedByteStore
    reference_cls = InMemoryByteStore


class ValueStoreMachine(_ModelMachine):
    store_cls = shmstore.SharedStore
    reference_cls = InMemoryStore
    value_strategy = values


_settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("machine", [ByteStoreMachine, ValueStoreMachine])
def test_proxy_matches_reference(machine, backend):
    try:
        machine.make_store = staticmethod(lambda: backend.make(machine.store_cls.__name__))
        machine.TestCase.settings = _settings
        machine.TestCase().runTest()
    finally:
        machine.close_store()


@pytest.mark.parametrize("byte_values", [True, False], ids=["bytes", "values"])
def test_proxy_in_spawned_worker_matches_reference(byte_values):
    cls = shmstore.SharedByteStore if byte_values else shmstore.SharedStore
    with cls() as store, multiprocessing.get_context("spawn").Pool(1) as pool:
        differences = pool.starmap(
            _workers.run_model_sequence_here,
            [(store, seed, 150, byte_values) for seed in range(4)],
        )
    assert differences == [[], [], [], []]
