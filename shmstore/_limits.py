"""The store's size limits, in bytes, fixed when the store is created.

``max_value_bytes`` bounds one value; ``max_batch_bytes`` one ``mset`` (its keys, as
UTF-8, and values); ``max_store_bytes`` the keys and values the store holds at once.
Each has its own :class:`LimitExceededError` subclass, whose message names the limit.
Proxies check value and batch sizes before sending anything; the manager checks all
three before applying anything, and bounds every request frame by the batch limit, so
no client can make it allocate more than that.

Defaults are sized for the machine the store starts on: values up to 512 MiB, batches
up to 1 GiB, and three quarters of the size of ``/dev/shm`` for the whole store.
"""

from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Sequence

from ._errors import BatchTooLargeError, ValueTooLargeError

__all__ = ["Limits"]

_DEFAULT_VALUE_BYTES = 512 << 20
_DEFAULT_BATCH_BYTES = 1 << 30


def _shm_bytes() -> int:
    try:
        info = os.statvfs("/dev/shm")
    except OSError:
        return 8 << 30
    return info.f_blocks * info.f_frsize


# A named tuple rather than a dataclass: the manager imports this module, and
# dataclasses (with inspect and ast) would cost it about 1 MB of private memory. The
# type checker sees the same fields, typed.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _Fields(NamedTuple):
        max_value_bytes: int
        max_batch_bytes: int
        max_store_bytes: int
else:
    _Fields = namedtuple("Limits", ["max_value_bytes", "max_batch_bytes", "max_store_bytes"])


class Limits(_Fields):
    """See the module docstring. Construct with :meth:`resolve`. Fields, in bytes:
    ``max_value_bytes``, ``max_batch_bytes``, ``max_store_bytes``; ``_asdict()`` gives
    them as a dict."""

    __slots__ = ()

    @classmethod
    def resolve(
        cls,
        max_value_bytes: int | None = None,
        max_batch_bytes: int | None = None,
        max_store_bytes: int | None = None,
    ) -> Limits:
        """The limits given, the defaults for the others.

        :raises ValueError: a limit is not a positive ``int``.
        """
        limits = cls(
            _DEFAULT_VALUE_BYTES if max_value_bytes is None else max_value_bytes,
            _DEFAULT_BATCH_BYTES if max_batch_bytes is None else max_batch_bytes,
            _shm_bytes() * 3 // 4 if max_store_bytes is None else max_store_bytes,
        )
        for name, value in limits._asdict().items():
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        return limits

    @property
    def max_frame_bytes(self) -> int:
        """Largest request frame: a batch at its limit, plus room for its framing."""
        return self.max_batch_bytes + max(1 << 20, self.max_batch_bytes // 8)

    def check_batch(
        self,
        keys: Sequence[str] | Sequence[bytes],
        value_sizes: Sequence[int],
        value_bytes: int | None = None,
        key_chars: int | None = None,
    ) -> None:
        """Raise if one value or the whole batch is over its limit. ``keys``: as
        ``str``, or as their UTF-8 ``bytes``; ``value_bytes`` and ``key_chars``, if
        given: the sums of ``value_sizes`` and of the keys' lengths, already added up.

        :raises ValueTooLargeError: names the first value over ``max_value_bytes``.
        :raises BatchTooLargeError: keys and values add up to over ``max_batch_bytes``.
        """
        values = sum(value_sizes) if value_bytes is None else value_bytes
        if values > self.max_value_bytes and max(value_sizes) > self.max_value_bytes:
            position = next(i for i, n in enumerate(value_sizes) if n > self.max_value_bytes)
            raise ValueTooLargeError(
                f"value at position {position} has {value_sizes[position]} bytes, over "
                f"max_value_bytes={self.max_value_bytes}"
            )
        # A key's UTF-8 is 1 to 4 bytes a character: encode only when that matters.
        chars = sum(map(len, keys)) if key_chars is None else key_chars
        if values + 4 * chars > self.max_batch_bytes:
            total = values + sum(
                len(k) if isinstance(k, bytes) else len(k.encode("utf-8", "surrogatepass"))
                for k in keys
            )
            if total > self.max_batch_bytes:
                raise BatchTooLargeError(
                    f"the batch's keys and values add up to {total} bytes, over "
                    f"max_batch_bytes={self.max_batch_bytes}"
                )
