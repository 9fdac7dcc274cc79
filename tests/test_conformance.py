"""LangChain's standard BaseStore suites against both store classes, on every data path
and on Redis (see the ``backend`` fixture), with the proxy in the owner and with the
proxy in a spawned child that received it by pickling."""

from __future__ import annotations

import multiprocessing

import pytest
from langchain_core.stores import BaseStore
from langchain_tests.integration_tests import BaseStoreAsyncTests, BaseStoreSyncTests

import shmstore
from tests import _workers


def _empty_store(cls_name: str, backend=None):
    """A fresh owned store in the test process, or, inside the spawned child, the
    inherited proxy emptied; owned stores are closed after the test, and the inherited
    proxy's kept staging segment removed."""
    inherited = _workers.INHERITED_STORES.get(cls_name)
    if inherited is None:
        with backend.make(cls_name) as store:
            yield store
    else:
        inherited.mdelete(list(inherited.yield_keys()))
        yield inherited
        # What closing the store would release: the staging segment the proxy keeps
        # for its next large batch (a descriptor the leak check would count).
        inherited._stager.release()


class _ByteStoreFixtures:
    @pytest.fixture
    def kv_store(self, backend) -> BaseStore[str, bytes]:
        yield from _empty_store("SharedByteStore", backend)

    @pytest.fixture
    def three_values(self) -> tuple[bytes, bytes, bytes]:
        return b"foo", b"bar", b"buzz"


class _ValueStoreFixtures:
    @pytest.fixture
    def kv_store(self, backend) -> BaseStore[str, object]:
        yield from _empty_store("SharedStore", backend)

    @pytest.fixture
    def three_values(self) -> tuple[object, object, object]:
        return {"foo": [1, 2.5]}, "bar", [None, b"buzz", {"n": True}]


class TestStandardSyncByteStore(_ByteStoreFixtures, BaseStoreSyncTests[bytes]):
    pass


async def _aclosed(stores):
    """The sync fixture's store, closed inside the test's event loop (a Redis store's
    asyncio connections belong to that loop)."""
    for store in stores:
        yield store
        if hasattr(store, "aclose") and not _workers.INHERITED_STORES:
            await store.aclose()


class TestStandardAsyncByteStore(_ByteStoreFixtures, BaseStoreAsyncTests[bytes]):
    @pytest.fixture
    async def kv_store(self, backend):
        async for store in _aclosed(_empty_store("SharedByteStore", backend)):
            yield store


class TestStandardSyncStore(_ValueStoreFixtures, BaseStoreSyncTests[object]):
    pass


class TestStandardAsyncStore(_ValueStoreFixtures, BaseStoreAsyncTests[object]):
    @pytest.fixture
    async def kv_store(self, backend):
        async for store in _aclosed(_empty_store("SharedStore", backend)):
            yield store


def test_standard_suites_pass_in_a_spawned_child():
    if _workers.INHERITED_STORES:
        pytest.skip("already inside the spawned child")
    ctx = multiprocessing.get_context("spawn")
    with shmstore.SharedByteStore() as byte_store, shmstore.SharedStore() as value_store:
        stores = {"SharedByteStore": byte_store, "SharedStore": value_store}
        with ctx.Pool(1) as pool:
            exit_code = pool.apply(_workers.run_conformance_suites, (stores, __file__))
    assert exit_code == 0


def test_proxies_are_langchain_base_stores(store_cls):
    with store_cls() as store:
        assert isinstance(store, BaseStore)
