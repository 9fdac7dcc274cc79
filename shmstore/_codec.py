"""How values are stored: as given (``bytes``), or msgpack-encoded, exactly (shared by
the shared-memory and the Redis stores, so a value means the same in both)."""

from __future__ import annotations

from typing import Any

import msgpack

from ._batch import short
from ._errors import InvalidValueError

__all__ = ["decode_msgpack", "encode_bytes", "encode_msgpack"]


def encode_bytes(values: list[Any]) -> list[bytes]:
    """Each value as ``bytes`` (``bytes``, ``bytearray`` or ``memoryview`` accepted).

    :raises InvalidValueError: names the first value of another type.
    """
    if set(map(type, values)) <= {bytes}:
        return values
    encoded = []
    for i, value in enumerate(values):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidValueError(
                f"value at position {i} is {type(value).__name__}, expected bytes: "
                f"{short.repr(value)}"
            )
        encoded.append(bytes(value))
    return encoded


def encode_msgpack(values: list[Any]) -> list[bytes]:
    """Each value msgpack-encoded, refusing what would not come back as itself (see
    :class:`~shmstore.SharedStore`).

    :raises InvalidValueError: names the first value that cannot be stored.
    """
    packer = msgpack.Packer(use_bin_type=True, strict_types=True, unicode_errors="surrogatepass")
    encoded = []
    for i, value in enumerate(values):
        try:
            encoded.append(packer.pack(value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidValueError(
                f"value at position {i} ({type(value).__name__}) cannot be stored: {exc}"
            ) from None
    return encoded


def decode_msgpack(values: list[bytes | None]) -> list[Any]:
    return [
        None
        if raw is None
        else msgpack.unpackb(raw, raw=False, strict_map_key=False, unicode_errors="surrogatepass")
        for raw in values
    ]
