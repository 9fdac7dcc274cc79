"""Fixtures shared by every test, and the leak check every test passes through.

Each test process (each pytest-xdist worker) gets its own runtime directory through
``SHMSTORE_RUNTIME_DIR``, inherited by every process it starts, so parallel workers
never see each other's stores and the leak check can attribute what it finds.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from shmstore._layout import directory_prefix

_RUNTIME_DIR = tempfile.mkdtemp(prefix="shmstore-test-")
# Segments of this process's stores; other xdist workers' have another directory tag.
_SEGMENTS = directory_prefix(_RUNTIME_DIR).lstrip("/")
os.environ["SHMSTORE_RUNTIME_DIR"] = _RUNTIME_DIR
# Removed by whichever process imported this file: an xdist worker, the xdist
# controller (which runs no session fixture), or a child running the suites.
atexit.register(shutil.rmtree, _RUNTIME_DIR, ignore_errors=True)


def _children() -> set[tuple[int, str]]:
    """(pid, command line) of every child of this process, zombies included."""
    me = os.getpid()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited while we looked
        # The field after the parenthesised command name: state, then ppid.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        if ppid == me:
            found.add((int(entry), cmdline))
    return found


# Processes of session fixtures started lazily, by the first test that needs them (the
# Redis Cluster): part of every baseline from then on, not that test's leak.
_SESSION_PIDS: set[int] = set()


def _snapshot() -> dict[str, set[object]]:
    return {
        "child processes": {c for c in _children() if c[0] not in _SESSION_PIDS},
        "file descriptors": set(os.listdir("/proc/self/fd")),
        "runtime-dir entries": set(os.listdir(_RUNTIME_DIR)),
        "/dev/shm entries": {e for e in os.listdir("/dev/shm") if e.startswith(_SEGMENTS)},
    }


_KEPT: list[object] = []


@pytest.fixture(scope="session", autouse=True)
def _long_lived_helpers() -> None:
    # multiprocessing starts the resource tracker and the forkserver once per process
    # and keeps them (and their descriptors) for good, and so does the heap arena that
    # shared ctypes (Array, Value) are carved from; make them before the first snapshot
    # so they are part of every baseline rather than reported as leaks.
    multiprocessing.resource_tracker.ensure_running()
    multiprocessing.forkserver.ensure_running()
    _KEPT.append(multiprocessing.get_context("spawn").Array("q", 1, lock=False))
    try:  # joblib's loky backend keeps a resource tracker of its own
        from joblib.externals.loky.backend import resource_tracker as loky_tracker
    except ImportError:
        pass
    else:
        loky_tracker.ensure_running()


@pytest.fixture(scope="session", autouse=True)
def _redis_server(_long_lived_helpers):
    """A redis-server of this test process's own, on a unix socket in its runtime
    directory, no persistence; its socket path, or ``None`` where redis-server is not
    installed (an error when ``SHMSTORE_REQUIRE_REDIS=1``, as in CI). Started for the
    whole session, before any test's leak snapshot."""
    if shutil.which("redis-server") is None:
        if os.environ.get("SHMSTORE_REQUIRE_REDIS") == "1":
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        yield None
        return
    directory = tempfile.mkdtemp(prefix="shmstore-redis-")
    server = start_redis(directory, "--appendonly", "no")
    try:
        yield os.path.join(directory, "redis.sock")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster(_long_lived_helpers):
    """``redis://`` URL of one node of a 3-master Redis Cluster of this test process's
    own, on loopback ports, no persistence; started by the first test that asks (it
    takes a few seconds), stopped at the session's end."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        if os.environ.get("SHMSTORE_REQUIRE_REDIS") == "1":
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed")
    directory = tempfile.mkdtemp(prefix="shmstore-cluster-")
    servers = []
    try:
        ports = _free_cluster_ports(3)
        for port in ports:
            node_dir = os.path.join(directory, str(port))
            os.mkdir(node_dir)
            servers.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--save", "", "--appendonly", "no", "--dir", node_dir],
                stdout=subprocess.DEVNULL,
            ))
            _SESSION_PIDS.add(servers[-1].pid)
        for port, server in zip(ports, servers, strict=True):
            _wait_until(lambda p=port: _node(p, lambda c: c.ping()), server, 20)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, timeout=60,
        )
        for port, server in zip(ports, servers, strict=True):
            _wait_until(lambda p=port: _node(p, _cluster_ok), server, 30)
        yield f"redis://127.0.0.1:{ports[0]}/"
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _free_cluster_ports(count: int) -> list[int]:
    """Loopback ports free now whose cluster bus ports (port + 10000) are free too."""
    import socket

    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port > 55000 or port in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _node(port: int, check) -> bool:
    """Whether ``check(client)`` holds for the server on a loopback port (False if it
    does not answer)."""
    import redis

    try:
        with redis.Redis(port=port, socket_timeout=2) as client:
            return bool(check(client))
    except redis.RedisError:
        return False


def _cluster_ok(client) -> bool:
    return b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO")


def _wait_until(condition, server: subprocess.Popen, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the Redis Cluster did not come up")
        time.sleep(0.05)


def start_redis(directory: str, *options: str) -> subprocess.Popen:
    """A redis-server on the unix socket ``<directory>/redis.sock``, no snapshots, its
    files in ``directory``, with ``options`` added; returned once it answers.

    :raises RuntimeError: it exited or did not answer within 20 s.
    """
    path = os.path.join(directory, "redis.sock")
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", path, "--unixsocketperm", "700",
         "--save", "", "--dir", directory, *options],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    # Ready once it answers: by then it has also renamed its process (which the leak
    # check compares), so no test sees the rename.
    while not _pong(path):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            server.wait()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.01)
    return server


def _pong(path: str) -> bool:
    """Whether a Redis server answers on the unix socket ``path``."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(path)
            sock.sendall(b"PING\r\n")
            return sock.recv(16)[:1] in (b"+", b"-")  # PONG, or NOAUTH: it answers
    except OSError:
        return False


@pytest.fixture
def redis_url(_redis_server):
    """``unix://`` URL of the session's redis-server (skips where there is none)."""
    if _redis_server is None:
        pytest.skip("redis-server is not installed")
    return f"unix://{_redis_server}"


class _PrivateServer:
    """A redis-server of one test's own in ``directory``: started, killed, started again
    on the same files."""

    def __init__(self, directory: str, *options: str) -> None:
        self.directory, self.options = directory, options
        self.path = os.path.join(directory, "redis.sock")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_redis(self.directory, *self.options)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture
def make_server():
    """Start private servers with the options given; each is killed at the test's end."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    made = []

    def make(*options: str) -> _PrivateServer:
        server = _PrivateServer(tempfile.mkdtemp(prefix="shmstore-redis-own-"), *options)
        made.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in made:
            server.kill()
            shutil.rmtree(server.directory, ignore_errors=True)


_NAMESPACES = iter(range(1 << 62))


@pytest.fixture(params=["direct", "staged", "manager", "redis", "redis-near", "redis-cluster"])
def backend(request, monkeypatch):
    """Every place a store's data lives and every way its values travel: the three data
    paths of a shared-memory store (see ``data_path``), and a Redis store on the
    session's server, in a namespace of its own, without and with a near cache, and on
    a 3-master Redis Cluster. A factory: ``backend.make(cls_name)`` gives a new store of
    ``SharedByteStore``'s or ``SharedStore``'s kind."""
    _select_data_path(request.param, monkeypatch)
    url = None
    if request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster")
    elif request.param.startswith("redis"):
        url = request.getfixturevalue("redis_url")
    return _Backend(request.param, url)


class _Backend:
    def __init__(self, name, url):
        self.name, self.url = name, url

    def make(self, cls_name: str, **options):
        import shmstore

        if self.url is None:
            return getattr(shmstore, cls_name)(**options)
        redis_cls = {"SharedByteStore": "RedisByteStore", "SharedStore": "RedisStore"}[cls_name]
        namespace = f"t{os.getpid()}.{next(_NAMESPACES)}"
        if self.name == "redis-near":
            options.setdefault("near_cache_bytes", 16 << 20)
        elif self.name == "redis-cluster":
            options.setdefault("cluster", True)
        return getattr(shmstore, redis_cls)(self.url, namespace=namespace, **options)

    def __repr__(self):
        return self.name


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_failed = report.failed
    return report


@pytest.fixture(autouse=True)
def no_leaks(request, _long_lived_helpers):
    """Fail any test that leaves a process, a descriptor, a store file or a segment.

    A test that already failed is not checked: its traceback keeps its objects, and
    their descriptors, alive, and the first failure is the one worth reading.
    """
    before = _snapshot()
    yield
    if getattr(request.node, "call_failed", False):
        return
    after = _snapshot()
    leaks = {what: after[what] - before[what] for what in after if after[what] - before[what]}
    if leaks:
        pytest.fail(f"test leaked: {leaks}")


@pytest.fixture(params=["direct", "staged", "manager"])
def data_path(request, monkeypatch):
    """Each way values travel: small batches over the socket with direct reads; every
    mset staged through a shared-memory segment; every read answered by the manager.
    Selected as a user would, through the environment of the process that creates the
    store (the store carries the choice to its manager and every proxy)."""
    _select_data_path(request.param, monkeypatch)
    return request.param


def _select_data_path(name: str, monkeypatch) -> None:
    if name == "staged":
        monkeypatch.setenv("SHMSTORE_STAGE_BYTES", "0")
    elif name == "manager":
        monkeypatch.setenv("SHMSTORE_DIRECT_READS", "0")


@pytest.fixture(params=["SharedByteStore", "SharedStore"])
def store_cls(request):
    import shmstore

    return getattr(shmstore, request.param)


@pytest.fixture
def byte_store():
    """An empty SharedByteStore owned by the test process."""
    from shmstore import SharedByteStore

    with SharedByteStore() as store:
        yield store


@pytest.fixture(params=["c", "python"])
def implementation(request, monkeypatch):
    """Each implementation of the hot functions, by name, also set for the stores the
    test creates (SHMSTORE_PUREPYTHON, which they carry to every process of theirs);
    the compiled one is skipped where it was not built."""
    from shmstore import _hot

    if request.param == "c":
        if _hot.load("c") is _hot.fallback:
            pytest.skip("the compiled core is not built here")
        monkeypatch.delenv("SHMSTORE_PUREPYTHON", raising=False)
    else:
        monkeypatch.setenv("SHMSTORE_PUREPYTHON", "1")
    return request.param
