"""Checking a batch before anything of it is sent: keys, pairs and prefixes, with an
error naming the offending item (shared by every store class)."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

from ._errors import InvalidBatchError, InvalidKeyError

__all__ = ["MsetBatch", "check_key", "check_prefix", "key_list", "short", "split_pairs"]

#: An ``mset`` batch taken apart: its keys, its values as stored, the values' sizes in
#: bytes, their sum, and the keys' lengths in characters added up.
MsetBatch = tuple[list[str], list[bytes], list[int], int, int]

short = reprlib.Repr()
short.maxstring = short.maxother = 60


def check_key(key: Any, position: int) -> str:
    """:raises InvalidKeyError: ``key`` is not a ``str``; names its position."""
    if not isinstance(key, str):
        raise InvalidKeyError(
            f"key at position {position} is {type(key).__name__}, expected str: {short.repr(key)}"
        )
    return key


_STR = frozenset({str})


def key_list(keys: Iterable[Any]) -> list[str]:
    """The keys as a list, every one a ``str``.

    :raises InvalidKeyError: names the first key that is not a ``str``.
    """
    listed = keys if type(keys) is list else list(keys)
    # One pass over the types on the hot path; the per-item scan, which names the
    # offending position, runs only when something is not a plain str.
    if not (type(listed[0]) is str if len(listed) == 1 else set(map(type, listed)) <= _STR):
        for i, key in enumerate(listed):
            check_key(key, i)
    return listed


def split_pairs(key_value_pairs: Iterable[Any]) -> tuple[list[str], list[Any]]:
    """The keys and values of ``(key, value)`` pairs, in order.

    :raises InvalidBatchError: names the first item that is not a pair.
    :raises InvalidKeyError: names the first key that is not a ``str``.
    """
    pairs = list(key_value_pairs)
    keys: list[str] = []
    values: list[Any] = []
    try:
        keys = [key for key, _ in pairs]
        values = [value for _, value in pairs]
    except (TypeError, ValueError):
        pass  # some item is not a pair: the scan below names it
    if len(keys) != len(pairs) or not set(map(type, keys)) <= _STR:
        for i, pair in enumerate(pairs):
            try:
                key, _value = pair
            except (TypeError, ValueError):
                raise InvalidBatchError(
                    f"item at position {i} is not a (key, value) pair: {short.repr(pair)}"
                ) from None
            check_key(key, i)
    return keys, values


def check_prefix(prefix: Any) -> None:
    """:raises InvalidKeyError: ``prefix`` is neither a ``str`` nor ``None``."""
    if prefix is not None and not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix is {type(prefix).__name__}, expected str or None")
