"""The shared-memory layout of a store: what the manager writes and every proxy reads.

This module is the format's one source. The compiled core (``shmstore/_hot/_chot.c``)
repeats the constants it needs, and ``tests/test_hot.py`` checks them against these.

All of a store's segments share a name prefix (:func:`segment_prefix`); each is an
array of native 64-bit words where words are concerned, every load and store of a word
one aligned 8-byte access, which is atomic on x86-64.

``ctl``, the header (:data:`CTL_BYTES`): :data:`HEADER_WORDS` header words, then
:data:`STRIPES` stripe version words. Header words:
    0 MAGIC  1 VERSION  2 INDEX_GEN  3 LIVE_KEYS  4 LIVE_BYTES (keys and values)
    5 NEXT_ORDER  6 MAX_VALUE_BYTES  7 MAX_BATCH_BYTES  8 MAX_STORE_BYTES
    9 MANAGER_PID  10 DIRECT_READS  11 STAGE_BYTES  12 IMPLEMENTATION (0 c, 1 python)
    13 EVICTION (0 none, 1 sieve)  14 DEFAULT_TTL_NS (0: none)
    15 HITS  16 MISSES (of reads the manager answered, and of closed readers' slots)
    17 EVICTIONS  18 EXPIRATIONS  19 SETS  20 DELETES
    21 STATS_SEQ (odd while a write changes words 3-5 and 15-20: a seqlock for
       :func:`shmstore._stats.read_stats`, which only readers of statistics wait on)
    22 INVALIDATION_SEQ (a near cache's: the number of the last invalidation
       applied, which a proxy reads before it reads the origin; see
       :mod:`shmstore._invalidation`; 0 in every other store)
    23 LIVENESS_TID (the thread id of the manager's main thread while it holds the
       robust mutex in words 24-31, which the kernel marks owner-died when that thread
       dies; 0: no such mutex, readers poll the manager's pidfd; see
       :func:`shmstore._hot.fallback.hold_liveness`)
    24-31 LIVENESS_MUTEX (a glibc ``pthread_mutex_t``, robust and process-shared)
    32 RESERVED (the arena segment id << 40 | byte offset up to which the manager
       has reserved pages: a hint a writing proxy prefaults ahead of, see
       :mod:`shmstore._prefault`; 0 before the first segment)
    33-511 reserved (zero)
Words 10-12 are the store's data-path options (:mod:`shmstore._options`), set by its
owner and read by every proxy, so every process of a store takes the same paths;
13-14 its cache policy (:mod:`shmstore._policy`); 15-20 counters only the manager
writes (:mod:`shmstore._stats`).

``i<gen>``, the index: an open-addressing hash table, linear probing, a power of two
of slots of :data:`SLOT_WORDS` words (the capacity is the segment's size / 40):
    0 HASH_KLEN  crc32(key) | len(key) << 32      (key as UTF-8, surrogatepass)
    1 REF        0 empty, 1 deleted, else arena segment id << 40 | byte offset
    2 VLEN       value length in bytes
    3 ORDER      insertion number: keys are listed in insertion order, as a dict's
    4 EXPIRES    0, or the deadline in ns of CLOCK_MONOTONIC (``time.monotonic_ns()``,
                 one clock for every process of the machine): from then on the
                 entry is a miss for every reader, until the manager reclaims it
When the index fills past :data:`MAX_LOAD`, the manager builds ``i<gen+1>`` and
switches INDEX_GEN; readers notice and map the new one.

``v<gen>``, the visited bytes of index ``i<gen>`` (only in a store whose EVICTION is
sieve): one byte per slot, set to 1 by a reader on a hit (if not set already) and
cleared by the manager's SIEVE hand (:mod:`shmstore._sieve`). Proxies map it
writable, the only segment they do: a stray write there can change which entry is
evicted next, never a value, since nothing else is read from it.

``c``, the reader table (as LMDB's gives each reader a slot): :data:`READER_SLOTS`
slots of two words, HITS and MISSES, each written only by the one proxy the manager
gave it to; the manager adds a slot into header words 15-16 and zeroes it when that
proxy's connection ends, before giving it to another. (A thread still inside a read
when its proxy closes may add its last batch's counts after that: they are then
counted in the slot's next holder's, never lost.)

``a<id>``, arena segments (ids from 1): each entry is the key's bytes then the value's,
starting at an 8-byte boundary, in a block of its size class (:func:`entry_bytes`).
Segment ids are never reused while the store lives.

Consistency: striped version counters (after MemC3, Fan, Andersen and Kaminsky, NSDI
2013), so a write disturbs only the reads of the keys it touches. A key's stripe is
``crc32(key) % STRIPES``. The manager, the only writer, applies a batch as:

1. make every stripe of the batch's keys odd (once each), then acknowledge; the
   batch's keys here include the entries it evicts (SIEVE) and the expired ones it
   reclaims, whose slots it marks deleted in step 3, so readers see the batch and the
   room made for it at one moment;
2. write the batch's entries into arena blocks no slot points at (fresh ones, or ones
   freed by an earlier batch, whose keys' stripes that batch moved on); values copied
   from a client's staging segment are written before step 1 instead;
3. change the slots: a new key's slot gets HASH_KLEN, VLEN and ORDER first and REF
   last; an overwrite sets VLEN then REF; a delete sets REF to DELETED;
4. make those stripes even again.
An index rebuild writes a whole new index segment nobody reads, then stores INDEX_GEN.

A reader reads INDEX_GEN and checks it is the generation it has mapped; then for each
key it reads the key's stripe (an odd one: a write in progress, try again), then REF,
then the slot's other words, then the entry, bounds-checking every offset and length;
then it reads INDEX_GEN and every stripe again, and if any differs, it tries again.

Why that is enough, on x86-64, whose loads are not reordered with loads nor stores
with stores (TSO): suppose a reader returns part of a batch B, the new value of ``a``
and the old of ``b``. It read a's entry after B's step 3 for ``a``, so after step 1
made b's stripe odd; its final read of b's stripe came later still, so it saw that
odd value or a later one. Its first read of b's stripe came before it read b's old
slot, so before B changed it: so it read the version from before step 1, which the
final read does not match, and the reader tries again. The same argument covers a key
that B deletes and a block that B frees and a later batch reuses (B moved the freed
key's stripe on before the block could be written again), and a slot of another stripe
that B fills on a key's probe path: REF is stored last and loaded first, so a reader
that sees the new REF sees the new HASH_KLEN, which belongs to another key. A reader
holding an index that was replaced sees INDEX_GEN change, since the switch precedes
every write into the new index. Elsewhere than x86-64, readers ask the manager
instead (see :mod:`shmstore._reader`).
"""

from __future__ import annotations

import functools
import os
import zlib

# BLAKE2 from CPython's own module: hashlib would load OpenSSL too, half a MB of the
# manager's memory for a hash taken once per store name.
try:
    from _blake2 import blake2b
except ImportError:  # an interpreter built without it
    from hashlib import blake2b

__all__ = [
    "CTL_BYTES",
    "HEADER_WORDS",
    "MAGIC",
    "MAX_LOAD",
    "READER_SLOTS",
    "SLOT_WORDS",
    "STRIPES",
    "VERSION",
    "arena_name",
    "ctl_name",
    "directory_prefix",
    "entry_bytes",
    "index_name",
    "key_hash",
    "no_index",
    "readers_name",
    "segment_prefix",
    "visited_name",
]

MAGIC = 0x5348_4D53_544F_5245  # "SHMSTORE"
VERSION = 3

# header words
W_MAGIC, W_VERSION, W_INDEX_GEN = 0, 1, 2
W_LIVE_KEYS, W_LIVE_BYTES, W_NEXT_ORDER = 3, 4, 5
W_MAX_VALUE_BYTES, W_MAX_BATCH_BYTES, W_MAX_STORE_BYTES, W_MANAGER_PID = 6, 7, 8, 9
W_DIRECT_READS, W_STAGE_BYTES, W_IMPLEMENTATION = 10, 11, 12
W_EVICTION, W_DEFAULT_TTL_NS = 13, 14
W_HITS, W_MISSES, W_EVICTIONS, W_EXPIRATIONS, W_SETS, W_DELETES = 15, 16, 17, 18, 19, 20
W_STATS_SEQ = 21
W_INVALIDATION_SEQ = 22
W_LIVENESS_TID, W_LIVENESS_MUTEX, LIVENESS_MUTEX_WORDS = 23, 24, 8
W_RESERVED = 32
HEADER_WORDS = 512

#: Stripe version words, after the header. 16,384 stripes (128 KiB): two batches of 64
#: keys share a stripe with probability about 1 - (1 - 64/16384)^64, 22%, and then
#: only while both are being applied at once.
STRIPES = 16384
CTL_BYTES = (HEADER_WORDS + STRIPES) * 8

# slot words
SLOT_WORDS = 5
S_HASH_KLEN, S_REF, S_VLEN, S_ORDER, S_EXPIRES = 0, 1, 2, 3, 4

#: Slots of the reader table, ``c``: proxies reading at once (one each); a proxy past
#: them reads through the manager, which counts its hits and misses itself.
READER_SLOTS = 4096
READER_WORDS = 2
R_HITS, R_MISSES = 0, 1
READERS_BYTES = READER_SLOTS * READER_WORDS * 8

EMPTY, DELETED = 0, 1
OFFSET_BITS = 40
OFFSET_MASK = (1 << OFFSET_BITS) - 1
MAX_LOAD = 0.7


def no_index() -> memoryview:
    """A one-slot empty index, not in shared memory: what the manager rebuilds its first
    index from, and what a reader holds until it maps the store's."""
    return memoryview(bytes(8 * SLOT_WORDS)).cast("Q")


def directory_prefix(runtime_dir: str) -> str:
    """``/shmstore.<uid>.<dir tag>.``, the start of the names of every segment of every
    store in ``runtime_dir``, so stores of the same name in two runtime directories, or
    of two users, never collide. Kept once computed: the manager names a staging
    segment with it per staged request, and hashing the directory each time was a
    tenth of its main thread's time in a staged ``mset`` (py-spy)."""
    return _directory_prefix(runtime_dir, os.getuid())


@functools.lru_cache(maxsize=64)
def _directory_prefix(runtime_dir: str, uid: int) -> str:
    tag = blake2b(os.fsencode(runtime_dir), digest_size=4).hexdigest()
    return f"/shmstore.{uid}.{tag}."


def segment_prefix(runtime_dir: str, name: str) -> str:
    """``/shmstore.<uid>.<dir tag>.<name>.``, the start of one store's segment names."""
    return f"{directory_prefix(runtime_dir)}{name}."


def ctl_name(prefix: str) -> str:
    return f"{prefix}ctl"


def index_name(prefix: str, generation: int) -> str:
    return f"{prefix}i{generation}"


def arena_name(prefix: str, segment_id: int) -> str:
    return f"{prefix}a{segment_id}"


def visited_name(prefix: str, generation: int) -> str:
    return f"{prefix}v{generation}"


def readers_name(prefix: str) -> str:
    return f"{prefix}c"


#: ``key_hash(key_bytes) -> int``: the stable 32-bit hash of a key, CRC-32 (IEEE, as
#: zlib's; Python's ``hash`` differs between processes).
key_hash = zlib.crc32


def entry_bytes(key_len: int, value_len: int) -> int:
    """Arena bytes an entry occupies: its size rounded up to a size class, 16 classes to
    each doubling (multiples of 8 below 256 bytes), so at most 1/16 is wasted and space
    freed by one entry can be reused by any entry of its class."""
    size = key_len + value_len
    step = max(8, 1 << max(0, size.bit_length() - 5))
    return -(-size // step) * step
