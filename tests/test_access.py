"""Only the same user gets in: another user can read neither the authkey nor a segment,
and cannot even reach the socket. Needs root, to run commands as another user (plain
coreutils: this interpreter may live where that user cannot run it); skipped otherwise."""

from __future__ import annotations

import os
import subprocess

import pytest

from shmstore._layout import ctl_name
from shmstore._runtime import StorePaths

NOBODY = 65534


def _as_nobody(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, user=NOBODY, group=NOBODY, capture_output=True, text=True, timeout=30
    )


def test_another_user_can_read_no_key_no_segment_and_reach_no_socket(byte_store):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    byte_store.mset([("secret", b"s3cr3t")])
    paths = StorePaths(byte_store.runtime_dir, byte_store.name)
    segment = "/dev/shm" + ctl_name(paths.segment_prefix)
    assert os.path.exists(segment)
    for command in (["cat", paths.key], ["cat", segment], ["stat", paths.socket]):
        done = _as_nobody(*command)
        assert done.returncode != 0 and "Permission denied" in done.stderr, (command, done)
