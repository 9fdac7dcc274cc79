"""The shared-memory layout of a store: what the manager writes and every proxy reads.

All of a store's segments share a name prefix (:func:`segment_prefix`); each is an
array of native 64-bit words where words are concerned, read and written through
``memoryview.cast("Q")``, so every load and store of a word is one aligned 8-byte
access, which is atomic on x86-64.

``ctl`` (4 KiB), the header; words:
    0 MAGIC  1 VERSION  2 SEQ  3 INDEX_GEN  4 INDEX_CAPACITY  5 LIVE_KEYS
    6 LIVE_BYTES (keys and values)  7 NEXT_ORDER  8 MAX_VALUE_BYTES  9 MAX_BATCH_BYTES
    10 MAX_STORE_BYTES  11 MANAGER_PID  12-511 reserved (zero)

``i<gen>``, the index: an open-addressing hash table, linear probing, ``capacity``
(a power of two) slots of :data:`SLOT_WORDS` words:
    0 HASH_KLEN  crc32(key) | len(key) << 32      (key as UTF-8, surrogatepass)
    1 REF        0 empty, 1 deleted, else arena segment id << 40 | byte offset
    2 VLEN       value length in bytes
    3 ORDER      insertion number: keys are listed in insertion order, as a dict's
    4 EXPIRES    reserved for a time-to-live (0: never); LIVE_BYTES in the header
                 is the running total a byte bound or eviction would check
When the index fills past :data:`MAX_LOAD`, the manager builds ``i<gen+1>`` and
switches INDEX_GEN; readers notice and map the new one.

``a<id>``, arena segments: each entry is the key's bytes then the value's, starting
at an 8-byte boundary, in a block of its size class (:func:`entry_bytes`). Segment ids
are never reused while the store lives.

Consistency is a store-wide seqlock: the manager makes SEQ odd before it changes
anything a reader can reach, applies a whole batch, and makes SEQ even again. It may
acknowledge a batch while SEQ is odd, before applying it; a reader that starts after
the acknowledgment then finds SEQ odd until the batch is all in. (A
batch's entries are written beforehand, into blocks no slot points at: fresh ones, or
ones freed by an earlier batch, whose SEQ change any reader still copying them sees.)
A reader reads SEQ, reads what it needs, and reads SEQ again; if the two differ, or
the first was odd, what it read may be torn or freed and reused, and it reads again.
x86-64 keeps loads in order with loads and stores with stores (TSO), which is all a
seqlock needs here; elsewhere readers ask the manager instead (see
:mod:`shmstore._reader`).
"""

from __future__ import annotations

import os
import zlib
from hashlib import blake2b

__all__ = [
    "CTL_BYTES",
    "MAGIC",
    "MAX_LOAD",
    "SLOT_WORDS",
    "VERSION",
    "arena_name",
    "ctl_name",
    "directory_prefix",
    "entry_bytes",
    "index_name",
    "key_hash",
    "segment_prefix",
]

MAGIC = 0x5348_4D53_544F_5245  # "SHMSTORE"
VERSION = 1
CTL_BYTES = 4096

# header words
W_MAGIC, W_VERSION, W_SEQ, W_INDEX_GEN, W_INDEX_CAPACITY = 0, 1, 2, 3, 4
W_LIVE_KEYS, W_LIVE_BYTES, W_NEXT_ORDER = 5, 6, 7
W_MAX_VALUE_BYTES, W_MAX_BATCH_BYTES, W_MAX_STORE_BYTES, W_MANAGER_PID = 8, 9, 10, 11

# slot words
SLOT_WORDS = 5
S_HASH_KLEN, S_REF, S_VLEN, S_ORDER, S_EXPIRES = 0, 1, 2, 3, 4

EMPTY, DELETED = 0, 1
OFFSET_BITS = 40
OFFSET_MASK = (1 << OFFSET_BITS) - 1
MAX_LOAD = 0.7


def directory_prefix(runtime_dir: str) -> str:
    """``/shmstore.<uid>.<dir tag>.``, the start of the names of every segment of every
    store in ``runtime_dir``, so stores of the same name in two runtime directories, or
    of two users, never collide."""
    tag = blake2b(os.fsencode(runtime_dir), digest_size=4).hexdigest()
    return f"/shmstore.{os.getuid()}.{tag}."


def segment_prefix(runtime_dir: str, name: str) -> str:
    """``/shmstore.<uid>.<dir tag>.<name>.``, the start of one store's segment names."""
    return f"{directory_prefix(runtime_dir)}{name}."


def ctl_name(prefix: str) -> str:
    return f"{prefix}ctl"


def index_name(prefix: str, generation: int) -> str:
    return f"{prefix}i{generation}"


def arena_name(prefix: str, segment_id: int) -> str:
    return f"{prefix}a{segment_id}"


#: ``key_hash(key_bytes) -> int``: the stable 32-bit hash of a key, CRC-32 (Python's
#: ``hash`` differs between processes). Bound directly, as the writer's hot loop calls it.
key_hash = zlib.crc32


def entry_bytes(key_len: int, value_len: int) -> int:
    """Arena bytes an entry occupies: its size rounded up to a size class, 16 classes to
    each doubling (multiples of 8 below 256 bytes), so at most 1/16 is wasted and space
    freed by one entry can be reused by any entry of its class."""
    size = key_len + value_len
    step = max(8, 1 << max(0, size.bit_length() - 5))
    return -(-size // step) * step
