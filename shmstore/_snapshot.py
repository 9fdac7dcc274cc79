"""Snapshots: a store's whole contents, as of one moment, in one file.

The manager writes and reads them (:meth:`Table.capture <shmstore._table.Table.capture>`
gives the moment); this module is the file format. All integers little-endian::

    header, 32 bytes
        0  8  MAGIC       b"SHMSNAP\\x00"
        8  4  VERSION     1
       12  4  flags       0
       16  8  created     wall-clock ns (time.time_ns()) when the moment was taken
       24  4  crc32       of bytes 0-23
       28  4  zero
    records, in insertion order (the order yield_keys lists), each
        0  4  klen        key bytes (UTF-8, surrogatepass)
        4  4  zero
        8  8  vlen        value bytes
       16  8  expires     0, or the deadline as wall-clock ns (time.time_ns())
       24     key, then value
    footer, 40 bytes
        0  8  END         b"SHMSEND\\x00"
        8  8  count       records
       16  8  length      bytes of all records
       24  4  crc32       of all records' bytes (zlib.crc32)
       28  4  crc32       of the header's 32 bytes, so a footer belongs to its header
       32  4  crc32       of footer bytes 0-31
       36  4  zero

A reader checks the header and the footer before anything else, so a truncated file
(no valid footer at its end) is refused at once; the records' checksum is known only
once they have all been read, so the manager loads a snapshot while it starts and
refuses to start if the checksum fails: nothing of a damaged file is ever served.
Deadlines are stored on the wall clock, since the monotonic clock of the machine that
loads the file is another; an entry past its deadline at load is not loaded.

Writing is atomic: the file is written as ``<path>.tmp-<pid>`` beside ``path``,
fsynced, renamed over ``path`` and the directory fsynced, so a crash at any moment,
even SIGKILL, leaves the previous snapshot whole.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import zlib

from ._errors import SnapshotError
from ._runtime import pid_alive

# typing is imported for the type checker only: this module runs in the manager.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from typing_extensions import Buffer

__all__ = ["MAGIC", "VERSION", "load", "save"]

MAGIC = b"SHMSNAP\x00"
END = b"SHMSEND\x00"
VERSION = 1
_HEADER = struct.Struct("<8sIIQI4x")
_RECORD = struct.Struct("<I4xQQ")
_FOOTER = struct.Struct("<8sQQIII4x")
#: Bytes gathered before each write (and each crc32 update).
_CHUNK = 8 << 20
#: Records per batch handed to the loader.
_BATCH = 4096


def save(path: str, created_ns: int, records: Iterable[tuple[Buffer, Buffer, int]]) -> int:
    """Write ``records`` (key bytes, value bytes, wall-clock deadline or 0; bytes-like
    objects) as the snapshot ``path``, atomically.

    :returns: the records written.
    :raises OSError: the file could not be written; ``path`` is as it was.
    """
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    _remove_abandoned(path)
    temporary = f"{path}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            header = _HEADER.pack(MAGIC, VERSION, 0, created_ns, 0)
            header = _HEADER.pack(MAGIC, VERSION, 0, created_ns, zlib.crc32(header[:24]))
            out.write(header)
            count = length = crc = 0
            chunk = bytearray()
            pack = _RECORD.pack
            for key, value, expires in records:
                chunk += pack(len(key), len(value), expires)  # type: ignore[arg-type]
                chunk += key
                chunk += value
                count += 1
                if len(chunk) >= _CHUNK:
                    crc = zlib.crc32(chunk, crc)
                    length += len(chunk)
                    out.write(chunk)
                    chunk.clear()
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)
            out.write(chunk)
            footer = _FOOTER.pack(END, count, length, crc, zlib.crc32(header), 0)
            footer_crc = zlib.crc32(footer[:32])
            out.write(_FOOTER.pack(END, count, length, crc, zlib.crc32(header), footer_crc))
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return count


def _remove_abandoned(path: str) -> None:
    """Remove the temporary files of saves to ``path`` whose process has died (killed
    midway): ``<path>.tmp-<pid>``, the pid gone."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name.removeprefix(f"{base}.tmp-")
        if pid == name or not pid.isdigit() or int(pid) == os.getpid():
            continue
        if not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def load(path: str) -> Iterator[list[tuple[memoryview, memoryview, int]]]:
    """The records of the snapshot ``path``, in batches, checked as they are read.

    The header and footer are checked before the first batch; the records' checksum,
    computed by a thread beside the caller, after the last: a caller that applies
    batches as they come must discard what it applied if this raises at any point.
    Keys and values are views of the file, mapped: a batch's views are valid until the
    next batch is asked for (then they are released), so a caller copies what it keeps.

    :raises FileNotFoundError: there is no such file.
    :raises SnapshotError: the file is not a snapshot, of another version, truncated or
        damaged; the message names the file and what is wrong.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(_HEADER.size)
        if len(head) < _HEADER.size or head[:8] != MAGIC:
            raise SnapshotError(f"{path} is not a shmstore snapshot")
        _magic, version, _flags, _created, head_crc = _HEADER.unpack(head)
        if zlib.crc32(head[:24]) != head_crc:
            raise SnapshotError(f"{path}: its header is damaged (checksum mismatch)")
        if version != VERSION:
            raise SnapshotError(
                f"{path} is a snapshot of format {version}; this shmstore reads {VERSION}"
            )
        if size < _HEADER.size + _FOOTER.size:
            raise SnapshotError(f"{path} is truncated: no footer")
        f.seek(size - _FOOTER.size)
        foot = f.read(_FOOTER.size)
        end, count, length, crc, header_crc, foot_crc = _FOOTER.unpack(foot)
        if end != END or zlib.crc32(foot[:32]) != foot_crc or header_crc != zlib.crc32(head):
            raise SnapshotError(f"{path} is truncated or damaged: no valid footer at its end")
        if _HEADER.size + length + _FOOTER.size != size:
            raise SnapshotError(
                f"{path} is damaged: its footer gives {length} bytes of records, the "
                f"file holds {size - _HEADER.size - _FOOTER.size}"
            )
        # Mapped with its pages populated up front (one system call, no fault a page).
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mapped = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
    try:
        with memoryview(mapped) as whole:
            records = whole[_HEADER.size : _HEADER.size + length]
            try:
                yield from _records(path, records, count, crc)
            finally:
                records.release()
    finally:
        mapped.close()


def _records(
    path: str, records: memoryview, count: int, crc: int
) -> Iterator[list[tuple[memoryview, memoryview, int]]]:
    checksum = _Checksum(records)
    unpack, head, length = _RECORD.unpack_from, _RECORD.size, len(records)
    batch: list[tuple[memoryview, memoryview, int]] = []
    at = 0
    try:
        for n in range(count):
            if at + head > length:
                raise SnapshotError(f"{path} is damaged: record {n} runs past the records' end")
            klen, vlen, expires = unpack(records, at)
            key_at = at + head
            at = key_at + klen + vlen
            if at > length:
                raise SnapshotError(f"{path} is damaged: record {n} runs past the records' end")
            batch.append((records[key_at : key_at + klen], records[key_at + klen : at], expires))
            if len(batch) >= _BATCH:
                yield batch
                _release(batch)
        if at != length:
            raise SnapshotError(f"{path} is damaged: bytes after its last record")
        if checksum.result() != crc:
            raise SnapshotError(f"{path} is damaged: its records' checksum does not match")
        yield batch
    finally:
        _release(batch)
        checksum.result()


def _release(batch: list[tuple[memoryview, memoryview, int]]) -> None:
    for key, value, _ in batch:
        key.release()
        value.release()
    batch.clear()


class _Checksum:
    """The crc32 of a buffer, computed by a thread (zlib releases the GIL over large
    buffers) while the caller goes on."""

    def __init__(self, data: memoryview) -> None:
        self._value = 0
        self._thread = threading.Thread(target=self._run, args=(data,), name="snapshot-crc")
        self._thread.start()

    def _run(self, data: memoryview) -> None:
        crc = 0
        for start in range(0, len(data), _CHUNK):
            with data[start : start + _CHUNK] as chunk:
                crc = zlib.crc32(chunk, crc)
        self._value = crc

    def result(self) -> int:
        self._thread.join()
        return self._value
