"""A store's cache policy: what a write does when the store is full, and when entries
expire. Set by the owner when the store is created, sent to the manager, and
published in the store's header (:mod:`shmstore._layout`) for every proxy.

* ``eviction_policy="none"`` (the default): ``InMemoryByteStore``'s semantics; a write
  that would take the store past ``max_store_bytes`` raises ``StoreTooLargeError``
  (after reclaiming expired entries, which it may).
* ``eviction_policy="sieve"``: that write evicts entries first, in the same write
  window, by SIEVE (Zhang, Yang, Yue, Vigfusson and Rashmi, "SIEVE is Simpler than
  LRU", NSDI 2024; :mod:`shmstore._sieve`), so the bound is never exceeded.
* ``ttl_s``: seconds every write lives by default (``None``: forever); ``mset`` can
  override it per batch. Deadlines are absolute, on ``CLOCK_MONOTONIC``, set when the
  manager applies the write, and not extended by reads.
"""

from __future__ import annotations

import math
from collections import namedtuple

from . import _layout as L

__all__ = ["EVICTION_POLICIES", "Policy", "ttl_ns"]

EVICTION_POLICIES = ("none", "sieve")

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _Fields(NamedTuple):
        eviction_policy: str
        ttl_ns: int
else:
    _Fields = namedtuple("Policy", ["eviction_policy", "ttl_ns"])


def ttl_ns(ttl_s: object, what: str = "ttl_s") -> int:
    """``ttl_s`` (seconds, a positive ``int`` or ``float``, or ``None``) in whole
    nanoseconds, at least 1; 0 for ``None`` (never expires).

    :raises ValueError: ``ttl_s`` is not ``None`` or a positive finite number.
    """
    if ttl_s is None:
        return 0
    if (
        type(ttl_s) not in (int, float)
        or not math.isfinite(ttl_s)  # type: ignore[arg-type]
        or ttl_s <= 0  # type: ignore[operator]
    ):
        raise ValueError(f"{what} must be None or a positive number of seconds, got {ttl_s!r}")
    return max(1, round(ttl_s * 1e9))  # type: ignore[operator]


class Policy(_Fields):
    """``eviction_policy`` (``"none"`` or ``"sieve"``) and ``ttl_ns`` (the default time
    to live in ns, 0: none); see the module docstring."""

    __slots__ = ()

    @classmethod
    def resolve(cls, eviction_policy: str = "none", ttl_s: float | None = None) -> Policy:
        """:raises ValueError: an unknown policy, or a ``ttl_s`` that is not ``None``
        or a positive number of seconds."""
        if eviction_policy not in EVICTION_POLICIES:
            raise ValueError(
                f"eviction_policy must be one of {', '.join(map(repr, EVICTION_POLICIES))}, "
                f"got {eviction_policy!r}"
            )
        return cls(eviction_policy, ttl_ns(ttl_s))

    @property
    def sieve(self) -> bool:
        return self.eviction_policy == "sieve"

    def publish(self, header: memoryview) -> None:
        header[L.W_EVICTION] = EVICTION_POLICIES.index(self.eviction_policy)
        header[L.W_DEFAULT_TTL_NS] = self.ttl_ns

    @classmethod
    def read(cls, header: memoryview) -> Policy:
        return cls(EVICTION_POLICIES[min(header[L.W_EVICTION], 1)], header[L.W_DEFAULT_TTL_NS])
