"""Starting and stopping a store's manager process, from the owner's side.

The manager is a fresh interpreter (``python -m shmstore._manager``), not a fork of the
owner: a fork would inherit the owner's threads' locks and whatever the owner had
loaded (a model, a GPU context), and ``multiprocessing`` refuses to start children from
daemonic pool workers. It runs in its own session, so Ctrl-C in a terminal reaches the
owner only. The authkey goes through its stdin, never its command line, which other
users can read in ``/proc``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from multiprocessing.connection import wait
from typing import Any

import msgpack

from ._errors import StoreError
from ._limits import Limits
from ._options import Options
from ._policy import Policy
from ._runtime import StorePaths

__all__ = ["ManagerProcess"]

# The directory that holds the shmstore package, so the manager imports this very copy
# even when the owner found it through a runtime sys.path change.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Seconds a manager that saves a snapshot as it stops is given to exit.
SAVING_STOP_TIMEOUT_S = 600.0


def _start_error(line: str) -> StoreError:
    """The error a manager's ``error: <kind>: <message>`` line stands for."""
    from ._errors import SnapshotError, StoreTooLargeError

    if not line:
        return StoreError("the manager failed to start: it exited")
    kind, _, message = line.removeprefix("error: ").partition(": ")
    cls = {"SnapshotError": SnapshotError, "StoreTooLargeError": StoreTooLargeError}.get(kind)
    if cls is not None:
        return cls(message)
    return StoreError(f"the manager failed to start: {line.removeprefix('error: ')}")


class ManagerProcess:
    """The owner's handle on a running manager process.

    Only the process that started the manager may stop it: a forked child inherits
    this object, and its :meth:`stop` does nothing.
    """

    def __init__(self, process: subprocess.Popen[bytes], paths: StorePaths, authkey: bytes) -> None:
        self._process = process
        self._paths = paths
        self._authkey = authkey
        self._owner_pid = os.getpid()
        #: Seconds :meth:`stop` waits for the manager to exit before killing it.
        self.stop_timeout_s = 5.0

    @property
    def pid(self) -> int:
        """The manager's process id."""
        return self._process.pid

    @property
    def owned_here(self) -> bool:
        """Whether this process started the manager (not a fork of the one that did)."""
        return os.getpid() == self._owner_pid

    @classmethod
    def start(
        cls,
        paths: StorePaths,
        authkey: bytes,
        *,
        limits: Limits,
        options: Options,
        policy: Policy,
        segment_bytes: int,
        start_timeout_s: float,
        tracking: dict[str, Any] | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> ManagerProcess:
        """Start a manager serving ``paths`` and wait until it accepts connections.

        :param start_timeout_s: seconds to wait for the manager to report ready.
        :param tracking: a near cache's origin (see :class:`~shmstore._manager.Manager`);
            it may hold a password, so it goes through the manager's stdin only.
        :param snapshot: the store's own snapshot file, ``{"path", "every_s"}``, loaded
            before the manager reports ready.
        :raises SnapshotError: that file is not a snapshot, truncated or damaged.
        :raises StoreError: it reported an error, exited, or was not ready in time; the
            process is gone and its files removed when this is raised.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_PARENT, env.get("PYTHONPATH")) if p
        )
        # -P (3.11+): do not put the current directory on the manager's sys.path.
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []
        process = subprocess.Popen(
            [sys.executable, *safe_path, "-m", "shmstore._manager"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        handle = cls(process, paths, authkey)
        if snapshot is not None:
            # Its exit saves the snapshot: give it time to, rather than kill it midway.
            handle.stop_timeout_s = SAVING_STOP_TIMEOUT_S
        assert process.stdin is not None and process.stdout is not None
        config = {
            "directory": paths.directory,
            "name": paths.name,
            "authkey": authkey,
            "owner_pid": os.getpid(),
            "limits": limits._asdict(),
            "segment_bytes": segment_bytes,
            "options": options._asdict(),
            "policy": policy._asdict(),
            "tracking": tracking,
            "snapshot": snapshot,
        }
        try:
            with process.stdin:
                process.stdin.write(msgpack.packb(config, use_bin_type=True))
            with process.stdout:
                if not wait([process.stdout.fileno()], start_timeout_s):
                    raise StoreError(f"the manager was not ready within {start_timeout_s} s")
                line = process.stdout.readline().decode(errors="replace").strip()
            if line != "ready":
                raise _start_error(line)
        except BaseException:
            handle.stop()
            raise
        return handle

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the manager (SIGTERM, then SIGKILL after ``timeout_s`` seconds, default
        :attr:`stop_timeout_s`), reap it and remove its files. A no-op outside the owner
        and after the first call."""
        if not self.owned_here or self._process.returncode is not None:
            return
        if timeout_s is None:
            timeout_s = self.stop_timeout_s
        try:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        finally:
            # The manager removes these itself unless it was killed first.
            self._paths.remove(self._authkey)
