"""The manager's key-value state.

Only the manager process touches a :class:`Table`, one request at a time, so every method
runs to completion before the next request is looked at: that is what makes each batch
atomic to every other process. The interface is batch-shaped on purpose, so the storage
behind it (a dict today; shared-memory segments next) can change without touching the
manager loop or the proxies.
"""

from __future__ import annotations

__all__ = ["Table"]


class Table:
    """A ``str -> bytes`` map with the batch semantics of ``InMemoryByteStore``."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The value of each key in order, ``None`` for a miss; duplicates are kept."""
        get = self._data.get
        return [get(key) for key in keys]

    def set_many(self, keys: list[str], values: list[bytes]) -> None:
        """Store the pairs in order, so the last value of a repeated key wins."""
        self._data.update(zip(keys, values, strict=True))

    def delete_many(self, keys: list[str]) -> None:
        """Remove the keys; missing ones are ignored."""
        pop = self._data.pop
        for key in keys:
            pop(key, None)

    def keys(self, prefix: str | None) -> list[str]:
        """The keys for which ``key.startswith(prefix)``, in insertion order; all if ``None``."""
        if not prefix:
            return list(self._data)
        return [key for key in self._data if key.startswith(prefix)]
