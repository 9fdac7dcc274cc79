"""A Redis store across a real network path: redis-server in a network namespace of
its own, two hosts (processes, each with a near cache of its own) in two others, each
reached over a veth pair. Runs where the machine allows it (root, ``ip netns``); skips
elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _netns_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None or shutil.which("redis-server") is None:
        return "needs iproute2 and redis-server"
    probe = f"shmprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"ip netns is not allowed here: {exc}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def network():
    """Namespaces ``<tag>r`` (the server: 10.77.1.1 and 10.77.2.1), ``<tag>a``
    (10.77.1.2) and ``<tag>b`` (10.77.2.2), a veth pair from each host to the server's;
    all removed at the end (deleting a namespace deletes its veth ends)."""
    reason = _netns_possible()
    if reason:
        pytest.skip(reason)
    tag = f"shm{os.getpid() % 100000}"
    server_ns, made = f"{tag}r", []
    try:
        for suffix in ("r", "a", "b"):
            _ip("netns", "add", tag + suffix)
            made.append(tag + suffix)
            _ip("-n", tag + suffix, "link", "set", "lo", "up")
        for n, host in ((1, "a"), (2, "b")):
            here, there = f"{tag}{host}0", f"{tag}{host}1"
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", here, "netns", server_ns)
            _ip("link", "set", there, "netns", tag + host)
            _ip("-n", server_ns, "addr", "add", f"10.77.{n}.1/24", "dev", here)
            _ip("-n", tag + host, "addr", "add", f"10.77.{n}.2/24", "dev", there)
            _ip("-n", server_ns, "link", "set", here, "up")
            _ip("-n", tag + host, "link", "set", there, "up")
        yield tag
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(namespace: str, *command: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", namespace, *command], **kwargs)


def _host(namespace: str, url: str, role: str) -> subprocess.Popen:
    code = f"from tests._workers import near_cache_host; near_cache_host({url!r}, 'x', {role!r})"
    return _in(
        namespace, sys.executable, "-c", code, cwd=_REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )


def test_two_hosts_share_a_store_over_the_network_and_invalidate_each_other(network):
    directory = tempfile.mkdtemp(prefix="shmstore-netns-")
    server = _in(
        f"{network}r", "redis-server", "--port", "6390", "--bind", "10.77.1.1", "10.77.2.1",
        "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", directory,
        stdout=subprocess.DEVNULL,
    )
    reader = writer = None
    try:
        # Ready once a host's namespace reaches it (over its veth pair).
        deadline = time.monotonic() + 20
        while subprocess.run(
            ["ip", "netns", "exec", f"{network}a", "redis-cli", "-h", "10.77.1.1", "-p",
             "6390", "ping"], capture_output=True, text=True,
        ).stdout.strip() != "PONG":
            assert server.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.05)
        reader = _host(f"{network}a", "redis://10.77.1.1:6390/0", "reader")
        assert reader.stdout.readline().split() == ["ready"]
        writer = _host(f"{network}b", "redis://10.77.2.1:6390/0", "writer")
        assert writer.stdout.readline().split() == ["wrote", "v2"]  # read its own write
        assert writer.wait(30) == 0
        reader.stdin.write("go\n")
        reader.stdin.flush()
        saw, value, _micros, hits = reader.stdout.readline().split()
        assert (saw, value) == ("saw", "v2")  # host B's write reached host A's near cache
        assert int(hits) >= 1  # and host A had been reading from it
        assert reader.wait(30) == 0
    finally:
        for process in (reader, writer):
            if process is not None:
                process.kill()
                process.wait()
                for stream in (process.stdin, process.stdout):
                    if stream is not None:
                        stream.close()
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)
