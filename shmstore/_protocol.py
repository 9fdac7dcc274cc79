"""The wire format between proxies and the manager.

Framing and authentication are ``multiprocessing.connection``'s: a frame is a 4-byte
big-endian length and the payload (a larger frame: ``-1`` and an 8-byte length), and a
connection is admitted only after the HMAC challenge on the store's authkey. Each frame
carries exactly one msgpack document. Pickle never crosses the wire: the worst a peer can
send is a frame that fails to decode, whereas unpickling untrusted bytes runs code.

A request is an array whose first item is an opcode::

    [MGET, keys]             -> list[bytes | None], one item per key, in order
    [MSET, keys, values, ttl]
                             -> None; pairs applied in order, the whole batch or nothing
    [MDELETE, keys]          -> None; missing keys ignored
    [KEYS, prefix | None]    -> list[str], the keys for which key.startswith(prefix)
    [MSET_SHM, keys, segment, lengths, ttl]
                             -> None; as MSET, with the values laid end to end in the
                                client's staging segment <store prefix><segment>, named
                                s<client pid>.<n>, which the manager unlinks
    [READER]                 -> int: the slot of the reader table (shmstore._stats)
                                this connection's proxy counts its hits and misses
                                in, until the connection ends; -1 if none is free
    [INVALIDATE, keys]       -> int; a near cache's (shmstore._invalidation): removes
                                the keys, records their invalidation, and returns its
                                number
    [SAVE, path]             -> int; writes a snapshot of the store as of one moment
                                to the absolute ``path`` (shmstore._snapshot), atomically;
                                the number of entries written
    [STOP]                   -> None; the manager stops after this reply (saving its
                                own snapshot first, if it has one)
    [INFO]                   -> map: "pid", "owner_pid", "started" (wall-clock ns),
                                "clients" (processes connected, the asker included),
                                "snapshot" (its own file, or nil)
    [FILL, keys, values, ttl, seen]
                             -> None; a near cache's: stores each pair unless an
                                invalidation after number ``seen`` touched its key
                                (then removes the key); ``ttl`` as for MSET, never nil

``ttl`` is the batch's time to live in nanoseconds, 0 for none, or nil for the store's
default.

``keys`` is an array of str, ``values`` an array of bin of the same length. A reply is
``[OK, result]`` or ``[ERROR, kind, message]``, ``kind`` naming a :mod:`shmstore` exception
class. Strings are packed with ``surrogatepass``, so every Python ``str``, lone surrogates
included, is a key that round-trips exactly.

The manager first offers each frame to :func:`shmstore._hot.fallback.parse_mset` (or its
compiled twin), which decodes an ``MSET`` in the form :func:`pack` writes it and
declines anything else; a declined frame is parsed here in full.
"""

from __future__ import annotations

import re

import msgpack

from ._errors import (
    BatchTooLargeError,
    InvalidKeyError,
    InvalidValueError,
    LimitExceededError,
    ProtocolError,
    SnapshotError,
    StoreError,
    StoreFullError,
    StoreTooLargeError,
    ValueTooLargeError,
)

# typing is imported for the type checker only: the manager imports this module, and
# at run time typing would cost that process memory for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

__all__ = [
    "FILL",
    "INFO",
    "INVALIDATE",
    "KEYS",
    "MDELETE",
    "MGET",
    "MSET",
    "MSET_SHM",
    "READER",
    "SAVE",
    "STOP",
    "encode_keys",
    "error_reply",
    "ok_reply",
    "pack",
    "parse_reply",
    "parse_request",
]

MGET = 1
MSET = 2
MDELETE = 3
KEYS = 4
MSET_SHM = 5
READER = 6
INVALIDATE = 7
FILL = 8
SAVE = 9
STOP = 10
INFO = 11

_OK = 0
_ERROR = 1

# Error kinds a reply may name; anything else arrives as a plain StoreError.
_ERROR_KINDS: dict[str, type[StoreError]] = {
    cls.__name__: cls
    for cls in (
        StoreError,
        ProtocolError,
        InvalidKeyError,
        InvalidValueError,
        LimitExceededError,
        StoreFullError,
        ValueTooLargeError,
        BatchTooLargeError,
        StoreTooLargeError,
        SnapshotError,
    )
}

# Number of items after the opcode, per request kind.
_ARITY = {
    MGET: 1, MSET: 3, MDELETE: 1, KEYS: 1, MSET_SHM: 4, READER: 0,
    INVALIDATE: 1, FILL: 4, SAVE: 1, STOP: 0, INFO: 0,
}
_MAX_TTL_NS = (1 << 62) - 1
_STAGING_SEGMENT = re.compile(r"s[0-9]+\.[0-9]+")


def encode_keys(keys: Sequence[str]) -> list[bytes]:
    """Each key's UTF-8, lone surrogates passed through, as :func:`pack` writes a key
    and the table indexes it (strict encoding first: it is twice as fast, and only a
    key with a lone surrogate needs the other)."""
    try:
        return list(map(str.encode, keys))
    except UnicodeEncodeError:
        return [key.encode("utf-8", "surrogatepass") for key in keys]


def pack(obj: Any) -> bytes:
    """Encode one message. ``bytes`` become msgpack bin, ``str`` msgpack str (UTF-8,
    lone surrogates passed through).

    Strict encoding first, as in :func:`encode_keys`: with ``unicode_errors`` given,
    msgpack encodes each ``str`` through a codec call rather than its UTF-8 fast path
    (a batch of 64 keys of 45 characters: 4.1 µs against 2.6 in one process), and only
    a message with a lone surrogate needs it. The bytes are the same either way.
    """
    try:
        frame: bytes = msgpack.packb(obj, use_bin_type=True)
    except UnicodeEncodeError:
        frame = msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogatepass")
    return frame


def _unpack(frame: bytes) -> Any:
    # unpackb bounds every container and string by len(frame), so a hostile length
    # inside a frame cannot make it allocate more than the frame itself.
    return msgpack.unpackb(frame, raw=False, use_list=True, unicode_errors="surrogatepass")


def _fail(message: str) -> NoReturn:
    raise ProtocolError(message)


def _check_types(items: list[Any], expected: type, what: str) -> None:
    # One pass over the types; the scan that names the position runs only on failure.
    if not set(map(type, items)) <= {expected}:
        for i, item in enumerate(items):
            if type(item) is not expected:
                _fail(f"{what} at position {i} is {type(item).__name__}")


def _check_keys(keys: Any) -> list[str]:
    if type(keys) is not list:
        _fail(f"keys must be an array, got {type(keys).__name__}")
    _check_types(keys, str, "key")
    return keys


def _check_ttl(ttl: Any) -> None:
    if ttl is not None and (type(ttl) is not int or not 0 <= ttl <= _MAX_TTL_NS):
        _fail(f"ttl must be nil or an integer of nanoseconds from 0 to {_MAX_TTL_NS}")


def parse_request(frame: bytes) -> tuple[int, list[Any]]:
    """Decode and check one request frame.

    :returns: ``(opcode, arguments)``, the arguments of the shapes listed in the module
        docstring.
    :raises ProtocolError: the frame is not msgpack, or not a request of a known kind
        with arguments of the right shapes and types.
    """
    try:
        message = _unpack(frame)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"undecodable request frame: {exc}") from exc
    if type(message) is not list or not message or type(message[0]) is not int:
        _fail("a request must be a non-empty array starting with an integer opcode")
    op, args = message[0], message[1:]
    arity = _ARITY.get(op)
    if arity is None:
        _fail(f"unknown opcode {op}")
    if len(args) != arity:
        _fail(f"opcode {op} takes {arity} arguments, got {len(args)}")
    if op in (MGET, MDELETE, INVALIDATE):
        _check_keys(args[0])
    elif op in (MSET, FILL):
        keys, values = _check_keys(args[0]), args[1]
        if type(values) is not list or len(values) != len(keys):
            _fail(f"opcode {op} needs an array of values as long as its array of keys")
        _check_types(values, bytes, "value")
        _check_ttl(args[2])
        if op == FILL and (args[2] is None or type(args[3]) is not int or args[3] < 0):
            _fail("FILL needs a ttl and a non-negative invalidation number")
    elif op == MSET_SHM:
        keys, segment, lengths = _check_keys(args[0]), args[1], args[2]
        if type(segment) is not str or not _STAGING_SEGMENT.fullmatch(segment):
            _fail("MSET_SHM needs a staging segment named s<pid>.<n>")
        if type(lengths) is not list or len(lengths) != len(keys):
            _fail("MSET_SHM needs an array of lengths as long as its array of keys")
        _check_types(lengths, int, "length")
        if lengths and min(lengths) < 0:
            _fail("MSET_SHM lengths must not be negative")
        _check_ttl(args[3])
    elif op == SAVE and (type(args[0]) is not str or not args[0].startswith("/")):
        _fail("SAVE needs an absolute path")
    elif op == KEYS and args[0] is not None and type(args[0]) is not str:
        _fail(f"prefix is {type(args[0]).__name__}, expected str or nil")
    return op, args


def ok_reply(result: Any = None) -> bytes:
    """Encode a successful reply carrying ``result``."""
    return pack([_OK, result])


def error_reply(exc: StoreError) -> bytes:
    """Encode an error reply that :func:`parse_reply` turns back into ``exc``'s class."""
    return pack([_ERROR, type(exc).__name__, str(exc)])


def parse_reply(frame: bytes) -> Any:
    """Decode one reply frame.

    :returns: the result of a successful request.
    :raises StoreError: the subclass the manager named, for an error reply.
    :raises ProtocolError: the frame is not a well-formed reply.
    """
    try:
        message = _unpack(frame)
    except Exception as exc:
        raise ProtocolError(f"undecodable reply frame: {exc}") from exc
    if type(message) is list and len(message) == 2 and message[0] == _OK:
        return message[1]
    if (
        type(message) is list
        and len(message) == 3
        and message[0] == _ERROR
        and type(message[1]) is str
        and type(message[2]) is str
    ):
        raise _ERROR_KINDS.get(message[1], StoreError)(message[2])
    raise ProtocolError("a reply must be [0, result] or [1, kind, message]")
