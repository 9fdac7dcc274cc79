"""shmstore: one key-value store shared by every process of a job on one machine.

``SharedByteStore`` and ``SharedStore`` implement LangChain's ``BaseStore`` interface
with the semantics of ``InMemoryByteStore`` and ``InMemoryStore``; a manager process owns
the data and every process holds a proxy. See README.md.

``IMPLEMENTATION`` is ``"c"`` where the compiled core runs and ``"python"`` where its
pure-Python twin does (see :mod:`shmstore._hot`).

The store classes are imported on first use (PEP 562), so the manager process, which
imports this package, does not pay for importing LangChain.
"""

from __future__ import annotations

from ._errors import (
    BatchTooLargeError,
    InvalidBatchError,
    InvalidKeyError,
    InvalidValueError,
    LimitExceededError,
    ProtocolError,
    SnapshotError,
    StoreClosedError,
    StoreConnectionError,
    StoreError,
    StoreFullError,
    StoreNotFoundError,
    StorePermissionError,
    StoreTooLargeError,
    ValueTooLargeError,
)
from ._hot import IMPLEMENTATION
from ._stats import StoreStats

# The manager process imports this package: typing, like the store classes, is kept out
# of its memory (annotations are not evaluated at run time).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._connect import connect
    from ._redis import RedisByteStore, RedisStore
    from ._store import SharedByteStore, SharedStore

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION",
    "BatchTooLargeError",
    "InvalidBatchError",
    "InvalidKeyError",
    "InvalidValueError",
    "LimitExceededError",
    "ProtocolError",
    "RedisByteStore",
    "RedisStore",
    "SharedByteStore",
    "SharedStore",
    "SnapshotError",
    "StoreClosedError",
    "StoreConnectionError",
    "StoreError",
    "StoreFullError",
    "StoreNotFoundError",
    "StorePermissionError",
    "StoreStats",
    "StoreTooLargeError",
    "ValueTooLargeError",
    "connect",
]

_LAZY = {
    "SharedByteStore": "_store",
    "SharedStore": "_store",
    "RedisByteStore": "_redis",
    "RedisStore": "_redis",
    "connect": "_connect",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module 'shmstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
