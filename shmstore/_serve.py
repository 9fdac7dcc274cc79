"""``shmstore serve NAME``: a store that lives on its own, as ``redis-server`` does,
for unrelated processes of the same user to attach to by name
(``SharedByteStore.attach(NAME)``, ``shmstore.connect("shm://NAME")``).

This process owns the store. It prints one line, ``ready NAME``, once the store takes
requests (scripts wait for it), and serves until SIGINT (Ctrl-C), SIGTERM or
``shmstore stop NAME``; then the manager saves the snapshot, if there is one, and every
file and segment of the store is removed.
"""

from __future__ import annotations

import os
import select
import signal
import sys
from typing import Any

from ._store import SharedByteStore

__all__ = ["serve"]


def serve(name: str, runtime_dir: str | None, options: dict[str, Any]) -> int:
    """Run the store ``name`` until told to stop; the process's exit code.

    :param options: :class:`~shmstore.SharedByteStore`'s (``max_store_bytes``,
        ``eviction_policy``, ``ttl_s``, ``snapshot``, ``snapshot_every_s``).
    :raises StoreError: the store could not be started (a store of that name runs
        already, a damaged snapshot, ...).
    """
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous = signal.set_wakeup_fd(wake_w)
    handlers = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with SharedByteStore(name=name, runtime_dir=runtime_dir, **options) as store:
            pid = store.manager_pid
            assert pid is not None
            manager = os.pidfd_open(pid)
            try:
                print(f"ready {name}", flush=True)
                # Until a signal arrives (the wakeup fd) or the manager exits (stopped).
                select.select([wake_r, manager], [], [])
            finally:
                os.close(manager)
        print(f"stopped {name}", flush=True)
        return 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous)
        os.close(wake_r)
        os.close(wake_w)
        sys.stdout.flush()
