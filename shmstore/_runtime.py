"""Where a store lives on the filesystem, and who may reach it.

Every store has two files in a runtime directory private to the user: ``<name>.sock``,
the manager's unix socket, and ``<name>.key``, the 32-byte authkey a proxy answers the
manager's challenge with. The directory is mode 0700 and the key 0600, so only the same
user (or root) can connect; the authkey check stops anyone who reaches the socket some
other way. Its data lives in shared-memory segments (mode 0600) whose names start with
:attr:`StorePaths.segment_prefix`. The directory is, in order of preference:

1. ``$SHMSTORE_RUNTIME_DIR`` (created if missing);
2. ``$XDG_RUNTIME_DIR/shmstore`` (a per-user tmpfs on systemd machines);
3. ``<tempfile.gettempdir()>/shmstore-<uid>``.

An existing directory is used only if it is a real directory (not a symlink) owned by
this user with no group or other permissions; otherwise another user could have planted
it in a shared ``/tmp``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import tempfile
from collections import namedtuple

from ._errors import StoreError, StoreNotFoundError, StorePermissionError
from ._layout import segment_prefix
from ._segment import unlink_segment

__all__ = [
    "StorePaths",
    "claim",
    "default_runtime_dir",
    "new_name",
    "pid_alive",
    "private_dir",
    "remove_segments",
    "store_names",
]

AUTHKEY_BYTES = 32
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 107
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SOCKET_SUFFIX = ".sock"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts: it cannot be signalled,
    but it runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def store_names(directory: str) -> list[str]:
    """The names of the stores with a socket in ``directory``, sorted (a store whose
    manager died uncleanly may still be listed: attaching tells)."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(e.removesuffix(_SOCKET_SUFFIX) for e in entries if e.endswith(_SOCKET_SUFFIX))


def default_runtime_dir() -> str:
    """The runtime directory chosen by the environment, per the module docstring."""
    explicit = os.environ.get("SHMSTORE_RUNTIME_DIR")
    if explicit:
        return os.path.abspath(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "shmstore")
    return os.path.join(tempfile.gettempdir(), f"shmstore-{os.getuid()}")


def private_dir(path: str) -> str:
    """Create ``path`` (mode 0700) or check that the existing one is private to this user.

    :raises StorePermissionError: it exists but is a symlink, not a directory, owned by
        another user, or open to group or others.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    _check_private(path)
    return path


def _check_private(path: str) -> None:
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise StorePermissionError(f"runtime directory {path!r} is not a directory")
    if info.st_uid != os.getuid():
        raise StorePermissionError(f"runtime directory {path!r} belongs to uid {info.st_uid}")
    if info.st_mode & 0o077:
        raise StorePermissionError(
            f"runtime directory {path!r} has mode {stat.S_IMODE(info.st_mode):o}; "
            "it must not be open to group or others"
        )


def new_name() -> str:
    """A fresh random store name: 16 hex digits."""
    return os.urandom(8).hex()


# A named tuple rather than a dataclass, as Limits is, to keep the manager small.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _Fields(NamedTuple):
        directory: str
        name: str
else:
    _Fields = namedtuple("StorePaths", ["directory", "name"])


class StorePaths(_Fields):
    """The files of the store ``name`` in ``directory``.

    :raises ValueError: ``name`` is not a valid store name.
    :raises StoreError: the socket's path would be too long for a unix socket.
    """

    __slots__ = ()

    def __new__(cls, directory: str, name: str) -> StorePaths:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"store name {name!r} must be 1-64 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        self = super().__new__(cls, directory, name)
        if len(os.fsencode(self.socket)) > _MAX_SOCKET_PATH:
            raise StoreError(
                f"socket path {self.socket!r} exceeds the {_MAX_SOCKET_PATH}-byte limit of "
                "unix sockets; set SHMSTORE_RUNTIME_DIR to a shorter directory"
            )
        return self

    @property
    def socket(self) -> str:
        return os.path.join(self.directory, self.name + _SOCKET_SUFFIX)

    @property
    def key(self) -> str:
        return os.path.join(self.directory, f"{self.name}.key")

    @property
    def segment_prefix(self) -> str:
        """The POSIX name prefix of the store's shared-memory segments."""
        return segment_prefix(self.directory, self.name)

    def remove_segments(self, suffix: str = "") -> None:
        """Unlink the store's segments whose names start with prefix + ``suffix``."""
        remove_segments(self.segment_prefix + suffix)

    def read_key(self) -> bytes:
        """The store's authkey.

        :raises StoreNotFoundError: no store of this name has a key here.
        :raises StorePermissionError: the directory is not private to this user, so its
            socket may be another user's, planted to receive this process's data.
        """
        try:
            _check_private(self.directory)
            fd = os.open(self.key, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise StoreNotFoundError(
                f"no store named {self.name!r} in {self.directory!r}"
            ) from None
        with os.fdopen(fd, "rb") as f:
            key = f.read(AUTHKEY_BYTES + 1)
        if len(key) != AUTHKEY_BYTES:
            raise StoreError(f"key file {self.key!r} is not a {AUTHKEY_BYTES}-byte authkey")
        return key

    def remove(self, authkey: bytes | None = None) -> None:
        """Unlink the socket, the key and the shared-memory segments; missing ones are
        ignored.

        :param authkey: remove them only if the key file still holds this key (or is
            gone): once a manager has died, its name may have been claimed by a new
            store, whose files must survive the old owner's clean-up.
        """
        if authkey is not None:
            try:
                if self.read_key() != authkey:
                    return
            except StoreNotFoundError:
                pass
        for path in (self.socket, self.key):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.remove_segments()


def remove_segments(prefix: str) -> None:
    """Unlink every shared-memory segment whose POSIX name starts with ``prefix``.
    Linux shows them as files in /dev/shm; elsewhere this does nothing."""
    try:
        entries = os.listdir("/dev/shm")
    except OSError:
        return
    bare = prefix.lstrip("/")
    for entry in entries:
        if entry.startswith(bare):
            unlink_segment("/" + entry)


def _is_stale(paths: StorePaths) -> bool:
    # A manager killed before it could clean up leaves its socket file behind, and
    # connecting to it is refused. A missing socket may be a manager still starting.
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(paths.socket)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def claim(paths: StorePaths) -> bytes:
    """Reserve ``paths.name`` by creating its key file (mode 0600) with a fresh authkey.

    A leftover of a store whose manager died without cleaning up is removed first.

    :returns: the authkey written.
    :raises StoreError: a live store already has that name.
    """
    private_dir(paths.directory)
    key = os.urandom(AUTHKEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    for _attempt in range(2):
        try:
            fd = os.open(paths.key, flags, 0o600)
        except FileExistsError:
            if _is_stale(paths):
                paths.remove()  # not ours to check: its owner and manager are gone
                continue
            break
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    raise StoreError(f"a store named {paths.name!r} already exists in {paths.directory!r}") from (
        OSError(errno.EEXIST, os.strerror(errno.EEXIST), paths.key)
    )
