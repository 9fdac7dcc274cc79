"""The exceptions shmstore raises.

One base, :class:`StoreError`, and subclasses split by meaning. Each subclass also
inherits the builtin a caller would already catch for that meaning (``TypeError`` for a
bad key, ``ConnectionError`` for an unreachable manager), so code written against
``InMemoryByteStore`` or a socket keeps working. Every class keeps its message in
``args`` only, so instances pickle by ``(type, args)`` and cross process boundaries intact.
"""

from __future__ import annotations

__all__ = [
    "BatchTooLargeError",
    "InvalidBatchError",
    "InvalidKeyError",
    "InvalidValueError",
    "LimitExceededError",
    "ProtocolError",
    "SnapshotError",
    "StoreClosedError",
    "StoreConnectionError",
    "StoreError",
    "StoreFullError",
    "StoreNotFoundError",
    "StorePermissionError",
    "StoreTooLargeError",
    "ValueTooLargeError",
]


class StoreError(Exception):
    """Base class of every error raised by shmstore."""


class InvalidBatchError(StoreError, TypeError):
    """An item of a batch has the wrong shape or type; the message names its position.

    Raised before anything is sent, so nothing of that batch is applied.
    """


class InvalidKeyError(InvalidBatchError):
    """A key (or a ``yield_keys`` prefix) is not a ``str``."""


class InvalidValueError(InvalidBatchError):
    """A value has a type the store cannot hold."""


class LimitExceededError(StoreError, ValueError):
    """A request is larger than a limit of the store; the message names the limit.

    Raised before anything of the batch is applied (by the proxy before anything is
    sent, where it can tell).
    """


class ValueTooLargeError(LimitExceededError):
    """A value is larger than the store's ``max_value_bytes``."""


class BatchTooLargeError(LimitExceededError):
    """A batch's keys and values add up to more than the store's ``max_batch_bytes``."""


class StoreTooLargeError(LimitExceededError):
    """Applying the batch would take the store's keys and values past ``max_store_bytes``."""


class StoreConnectionError(StoreError, ConnectionError):
    """The manager cannot be reached: it died, was stopped, or broke the connection.

    The original error, if any, is the ``__cause__``. A request in flight when this is
    raised may or may not have been applied; a request raised against before it was sent
    was not.
    """


class StoreClosedError(StoreConnectionError):
    """This proxy was closed by its own process (``close()`` or leaving its ``with`` block)."""


class StoreNotFoundError(StoreConnectionError, FileNotFoundError):
    """No running store has that name in the runtime directory searched: it never
    existed, or its manager has stopped and removed its files."""


class StoreFullError(StoreError, MemoryError):
    """Shared memory (``/dev/shm``) has no room for a write. Raised before anything of
    the batch is applied; the store keeps serving reads and writes that fit."""


class StorePermissionError(StoreError, PermissionError):
    """The runtime directory or a store's files are not private to this user."""


class SnapshotError(StoreError):
    """A snapshot file cannot be loaded: not a snapshot, of another format, truncated
    or damaged. The message names the file and what is wrong; nothing of it was
    loaded."""


class ProtocolError(StoreError, ValueError):
    """A frame did not decode to a well-formed request or reply."""
