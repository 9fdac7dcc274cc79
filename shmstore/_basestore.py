"""The ``BaseStore`` interface, for when ``langchain-core`` is not installed.

With ``langchain-core`` installed the store classes derive from
``langchain_core.stores.BaseStore`` itself, so ``isinstance`` checks in LangChain code
hold; this stand-in declares the same abstract methods so shmstore works without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

__all__ = ["BaseStore"]

K = TypeVar("K")
V = TypeVar("V")


class BaseStore(ABC, Generic[K, V]):
    """Batched key-value interface: ``mget``, ``mset``, ``mdelete``, ``yield_keys``."""

    @abstractmethod
    def mget(self, keys: Sequence[K]) -> list[V | None]: ...

    @abstractmethod
    def mset(self, key_value_pairs: Sequence[tuple[K, V]]) -> None: ...

    @abstractmethod
    def mdelete(self, keys: Sequence[K]) -> None: ...

    @abstractmethod
    def yield_keys(self, *, prefix: str | None = None) -> Iterator[K] | Iterator[str]: ...
