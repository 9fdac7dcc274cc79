"""Functions run in other processes by the tests: importable by name, so they reach
spawn, forkserver and loky workers."""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import shutil
import signal
import sys
import time
import zlib

VALUE_BYTES = 1536

# A proxy handed to this process at start-up, for pool initializers.
STORE = None


def value_for(key: str, version: int = 0) -> bytes:
    """A deterministic value for ``key`` at ``version``, of VALUE_BYTES bytes."""
    seed = f"{key}|{version}|".encode()
    return (seed * (VALUE_BYTES // len(seed) + 1))[:VALUE_BYTES]


def write_and_read(store, worker: int, count: int = 20) -> list[bytes | None]:
    """Write ``count`` keys of its own, read them and one key the owner wrote."""
    keys = [f"w{worker}:{i}" for i in range(count)]
    store.mset([(k, value_for(k)) for k in keys])
    return store.mget([*keys, "from-owner"])


def init_worker(store) -> None:
    global STORE
    STORE = store


def task_with_initializer_store(worker: int) -> list[bytes | None]:
    return write_and_read(STORE, worker)


def pid_and_key_count(store) -> tuple[int, int]:
    return os.getpid(), len(list(store.yield_keys()))


def hammer(store, tag: str, rounds: int) -> int:
    """Read back this caller's own keys ``rounds`` times; count the wrong answers.

    Run concurrently in two processes on one inherited proxy, a shared connection would
    hand each process some of the other's replies.
    """
    keys = [f"{tag}:{i}" for i in range(8)]
    store.mset([(k, k.encode()) for k in keys])
    wrong = 0
    for r in range(rounds):
        batch = keys[r % 8 :] + keys[: r % 8]
        if store.mget(batch) != [k.encode() for k in batch]:
            wrong += 1
    return wrong


def hammer_in_child(store, tag: str, rounds: int, results) -> None:
    results.put(hammer(store, tag, rounds))


def report_role_then_close(store, results) -> None:
    results.put(store.manager_pid)
    store.close()


def write_versions(store, keys: list[str], versions: int, ready, done) -> None:
    """Overwrite all ``keys`` with one batch per version, each batch one version."""
    ready.wait()
    for v in range(versions):
        store.mset([(k, value_for(k, v)) for k in keys])
    done.set()


def read_batches(store, keys: list[str], ready, done, results) -> None:
    """Read all ``keys`` in one batch until ``done``; report (reads, mixed reads, versions)."""
    versions_seen = set()
    reads = mixed = 0
    ready.set()
    while not done.is_set():
        values = store.mget(keys)
        if values[0] is None:
            continue
        version = {v.split(b"|")[1] for v in values if v is not None}
        if len(version) != 1 or None in values:
            mixed += 1
        versions_seen |= version
        reads += 1
    results.put((reads, mixed, len(versions_seen)))


def own_a_store(cls_name: str, info, stop) -> None:
    """Create a store, report (name, manager pid), and hold it until ``stop`` is set."""
    import shmstore

    store = getattr(shmstore, cls_name)()
    store.mset([("owned", b"yes")] if cls_name == "SharedByteStore" else [("owned", "yes")])
    info.put((store.name, store.manager_pid))
    stop.wait()
    store.close()


def run_in_child(method: str, target, *args):
    """Run ``target(*args, results)`` in a child started by ``method``, where it puts
    one result on ``results``; returns (that result, the child's exit code, its pid)."""
    ctx = multiprocessing.get_context(method)
    results = ctx.SimpleQueue()
    child = ctx.Process(target=target, args=(*args, results))
    child.start()
    result = results.get()
    child.join()
    results.close()
    return result, child.exitcode, child.pid


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    """Wait for any process (not only a child) to exit; True if it did in time."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout_s)
        return bool(readable)
    finally:
        os.close(fd)


def eventually(condition, within_s: float) -> bool:
    """Whether ``condition()`` holds within ``within_s`` seconds, checked every 10 ms.

    For what the manager does asynchronously after a client's connection ends (on that
    connection's thread): a deadline on a promise, not a way of ordering steps.
    """
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def shm_bytes(prefix: str) -> int:
    """Bytes allocated to the /dev/shm entries whose names start with ``prefix``."""
    return sum(
        os.stat(os.path.join("/dev/shm", e)).st_blocks * 512
        for e in os.listdir("/dev/shm")
        if e.startswith(prefix)
    )


def manager_sockets(store) -> int:
    """Sockets the manager holds: its listener and one per connection. (Its other
    descriptors are the segments it maps, which grow with the store.)"""
    return sockets_of(store.manager_pid)


def rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


# -- model-based sequences -------------------------------------------------------------

AWKWARD_KEYS = [
    "",
    ":",
    "a:b",
    "*",
    "f*",
    "[",
    "[a]",
    "a b",
    " ",
    "ключ",
    "键",
    "\ud800",
    "fo",
    "foo",
    "foobar",
    "x" * 10_000,
    "\x00",
    "é",
    "e\u0301",
]


def random_key(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(AWKWARD_KEYS)
    return "".join(rng.choice("fo:*[ é") for _ in range(rng.randint(0, 4)))


def random_value(rng: random.Random, byte_values: bool):
    if byte_values:
        return rng.randbytes(rng.randint(0, 40))
    return rng.choice(
        [
            None,
            True,
            0,
            -(2**63),
            2**64 - 1,
            1.5,
            "",
            "text",
            b"bin",
            [1, "a", None],
            {"k": [1, {"n": b"x"}]},
            {1: "int key"},
            rng.random(),
        ]
    )


def run_model_sequence(store, reference, seed: int, steps: int, byte_values: bool) -> list[str]:
    """Apply one random sequence of operations to ``store`` and ``reference``; return a
    description of every step where their results differ (empty: identical)."""
    rng = random.Random(seed)
    store.mdelete(list(store.yield_keys()))
    reference.mdelete(list(reference.yield_keys()))
    differences = []
    for step in range(steps):
        op = rng.choice(["mget", "mset", "mdelete", "yield_keys", "yield_keys_prefix"])
        keys = [random_key(rng) for _ in range(rng.randint(0, 6))]
        if op == "mget":
            args = (keys,)
        elif op == "mset":
            args = ([(k, random_value(rng, byte_values)) for k in keys],)
        elif op == "mdelete":
            args = (keys,)
        else:
            args = ()
        if op.startswith("yield_keys"):
            prefix = random_key(rng) if op == "yield_keys_prefix" else None
            got = list(store.yield_keys(prefix=prefix))
            want = list(reference.yield_keys(prefix=prefix))
        else:
            got = getattr(store, op)(*args)
            want = getattr(reference, op)(*args)
        if got != want:
            differences.append(
                f"step {step}: {op}{args!r:.200} gave {got!r:.200}, reference {want!r:.200}"
            )
    return differences


def run_model_sequence_here(store, seed: int, steps: int, byte_values: bool) -> list[str]:
    """run_model_sequence against the reference built in this process."""
    from langchain_core.stores import InMemoryByteStore, InMemoryStore

    reference = InMemoryByteStore() if byte_values else InMemoryStore()
    return run_model_sequence(store, reference, seed, steps, byte_values)


# -- the standard suites in a spawned child --------------------------------------------

# Proxies handed to a child that runs the conformance suites against them.
INHERITED_STORES: dict[str, object] = {}


def run_conformance_suites(stores: dict, module_path: str) -> int:
    """Run the conformance module's standard suites in this process against ``stores``
    (class name -> proxy received by pickling); return pytest's exit code."""
    import pytest

    INHERITED_STORES.update(stores)
    for name, store in stores.items():
        # Connect and map the segments now: the proxies' connection and mappings (an
        # mmap keeps a descriptor) live for the whole run and must not count as
        # descriptors leaked by the first test that uses them.
        store.mset([("warm-up", b"x" if name == "SharedByteStore" else "x")])
        # Served once the mset is applied (the manager applies a small batch after
        # acknowledging it), so the mget that follows reads the segments directly.
        list(store.yield_keys())
        store.mget(["warm-up"])
        store.mdelete(["warm-up"])
    args = [module_path, "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    args += ["-k", "Standard and direct"]  # the inherited proxies, once
    try:
        return int(pytest.main(args))
    finally:
        # This pool worker ends with os._exit, so the conftest's atexit clean-up of the
        # runtime directory it made would not run.
        shutil.rmtree(os.environ["SHMSTORE_RUNTIME_DIR"], ignore_errors=True)


def sockets_of(pid: int) -> int:
    """Number of sockets a process has open."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def count_sockets() -> int:
    """Number of sockets this process has open."""
    return sockets_of(os.getpid())


# -- the stress test --------------------------------------------------------------------
#
# A value carries its key, a version and a checksum of its payload, so a reader can
# tell a torn value (checksum), a phantom (another key's value, or one never written)
# and a stale one (older than a write acknowledged before the read began) on sight.


def stress_value(key: str, version: int, size: int) -> bytes:
    payload = (f"{key}/{version}/".encode() * (size // 8 + 1))[:size]
    return f"{key}|{version}|{zlib.crc32(payload)}|".encode() + payload


def check_stress_value(key: str, raw: bytes) -> int:
    """The value's version; raises AssertionError for a torn or misplaced value."""
    head_key, version, crc, payload = raw.split(b"|", 3)
    assert head_key.decode() == key, f"phantom: {key!r} holds {head_key!r}'s value"
    assert zlib.crc32(payload) == int(crc), f"torn value under {key!r}"
    return int(version)


def stress_keys(group: int, size: int) -> list[str]:
    return [f"g{group}:k{i}" for i in range(size)]


def stress_writer(
    store, groups: int, group_size: int, ops: int, started, acked, ready, done
) -> None:
    """Overwrite or delete whole groups, growing the store as it goes (ever more keys,
    and now and then values large enough to go through a staging segment).
    ``started[group]`` is the version of the last operation begun on the group;
    ``acked[group]`` that of the last one acknowledged, negative for a deletion."""
    rng = random.Random(1)
    ready.wait()
    for version in range(1, ops + 1):
        group = rng.randrange(groups)
        keys = stress_keys(group, group_size)
        started[group] = version
        if rng.random() < 0.15:
            store.mdelete(keys)
            acked[group] = -version
        else:
            size = 300_000 if rng.random() < 0.02 else rng.randrange(16, 2048)
            store.mset([(k, stress_value(k, version, size)) for k in keys])
            acked[group] = version
        if version % 50 == 0:  # grow: fresh keys force index rebuilds and new arena space
            store.mset([(f"fill:{version}:{i}", b"x" * 512) for i in range(200)])
    done.set()


def stress_reader(
    store, groups: int, group_size: int, started, acked, ready, done, results
) -> None:
    """Read whole groups until ``done``; report (reads, violations, versions seen)."""
    rng = random.Random(os.getpid())
    reads, violations, versions = 0, [], set()
    ready.set()
    while not done.is_set():
        group = rng.randrange(groups)
        keys = stress_keys(group, group_size)
        before = acked[group]
        values = store.mget(keys)
        newer_begun = started[group] != abs(before)
        reads += 1
        try:
            present = [v for v in values if v is not None]
            if not present:
                # Nothing there is right only if the last acknowledged operation on the
                # group was a deletion, or a newer one (maybe a deletion) had begun.
                assert before <= 0 or newer_begun, f"stale: group {group} lost v{before}"
                continue
            assert len(present) == len(values), f"half a batch in group {group}"
            seen = {check_stress_value(k, v) for k, v in zip(keys, values, strict=True)}
            assert len(seen) == 1, f"versions {sorted(seen)} mixed in group {group}"
            (version,) = seen
            assert version >= abs(before), f"stale: v{version} after v{abs(before)} was acked"
            assert before >= 0 or version > -before, f"resurrected after delete v{-before}"
            versions.add(version)
        except AssertionError as exc:
            violations.append(str(exc))
    results.put((reads, violations[:5], len(violations), len(versions)))


def noise_writer(store, done) -> None:
    """Overwrite and delete keys of its own, without pause, until ``done``: the readers
    of other keys must not notice."""
    rng = random.Random(2)
    n = 0
    while not done.is_set():
        keys = [f"noise:{rng.randrange(2000)}" for _ in range(64)]
        if n % 4 == 3:
            store.mdelete(keys)
        else:
            store.mset([(k, os.urandom(rng.randrange(16, 2048))) for k in keys])
        n += 1


# -- fault injection: victims report progress, the test kills them at a chosen step ----
# (``progress`` comes last: tests/test_faults.py appends it)


def write_groups_until_killed(store, staged_every: int, progress) -> None:
    """Write group n at version n (16 keys), forever; every ``staged_every``-th batch is
    large enough to go through a staging segment. Reports n before each write."""
    n = 0
    while True:
        keys = stress_keys(n % 8, 16)
        size = 40_000 if staged_every and n % staged_every == 0 else 200
        progress.send(n)
        store.mset([(k, stress_value(k, n, size)) for k in keys])
        n += 1


def read_until_killed(store, progress) -> None:
    n = 0
    while True:
        progress.send(n)
        store.mget(stress_keys(n % 8, 16))
        n += 1


def call_until_manager_dies(store, results, progress) -> None:
    """Make calls until one fails; report the exception's type name."""
    n = 0
    try:
        while True:
            progress.send(n)
            store.mset([(f"big{n}", b"x" * 2_000_000)])  # long enough to be caught in flight
            store.mget([f"big{n}"])
            n += 1
    except Exception as exc:
        results.send(type(exc).__name__)


def survive_interrupts(store, control, progress) -> None:
    """Call the store round after round, catching KeyboardInterrupt (real SIGINTs sent by
    the test), until ``control`` says stop; after each call, check that the proxy still
    answers this process's own requests correctly. Each round starts by reporting
    ``("round", n, interrupts)``, which is how the test knows a signal was caught before
    it sends the next; the end reports ``("done", interrupts, wrong)``."""
    # Python's own handler, even if this process was started with SIGINT ignored (as a
    # shell does for a command it runs in the background): the test is about Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupts = wrong = 0
    n = 0
    while True:
        try:
            progress.send(("round", n, interrupts))
            if control.poll():
                break
            store.mset([(f"i{n % 4}", f"v{n}".encode())])
            if list(store.yield_keys(prefix=f"i{n % 4}")) != [f"i{n % 4}"]:
                wrong += 1
        except KeyboardInterrupt:
            interrupts += 1
        try:
            store.mset([("check", f"c{n}".encode())])
            if store.mget(["check"]) != [f"c{n}".encode()] or list(
                store.yield_keys(prefix="check")
            ) != ["check"]:
                wrong += 1
        except KeyboardInterrupt:
            interrupts += 1
        n += 1
    progress.send(("done", interrupts, wrong))


def stage_twice_and_report(store, results) -> None:
    """In a forked child: two large batches through the inherited proxy, then report
    what a read gives and close it."""
    for n in range(2):
        store.mset([("child", (f"c{n}" * 150_000).encode())])
    results.put(store.mget(["child"]))
    store.close()


def stage_then_report(store, progress) -> None:
    """Stage one large batch, report that its staging segment exists, and wait to be
    killed before the request is sent."""
    from shmstore import _store

    build_request = _store._SharedStoreBase._mset_request

    def staged_then_stop(self, *batch_and_ttl):
        frame, staged = build_request(self, *batch_and_ttl)
        progress.send(staged.segment.name)
        progress.recv()  # never answered: the test kills us here
        return frame, staged

    _store._SharedStoreBase._mset_request = staged_then_stop
    store.mset([("staged", b"x" * 1_000_000)])


# -- load and soak ------------------------------------------------------------------------


def hold_connections(name: str, count: int, ready, release) -> None:
    """Attach ``count`` proxies (one connection each), use each, hold them all until
    ``release``, then close them."""
    import shmstore

    proxies = [shmstore.SharedByteStore.attach(name) for _ in range(count)]
    for i, proxy in enumerate(proxies):
        key = f"{os.getpid()}:{i}"
        proxy.mset([(key, key.encode())])
        assert list(proxy.yield_keys(prefix=key)) == [key]  # a request on this connection
        assert proxy.mget([key]) == [key.encode()]
    ready.put(os.getpid())
    release.wait()
    for proxy in proxies:
        proxy.close()


def soak(store, worker: int, workers: int, seconds: float, results) -> None:
    """Mixed mset, mget, mdelete and yield_keys for ``seconds``, on this worker's own keys
    (whose every acknowledged state it tracks) and everyone's (whose integrity it
    checks). Reports (expected final state of its keys, operations, violations)."""
    rng = random.Random(worker)
    own = [f"p{worker}:{i}" for i in range(64)]
    everyone = [f"p{w}:{i}" for w in range(workers) for i in range(64)]
    expected: dict[str, int | None] = {}
    operations, violations = 0, []
    version = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        operations += 1
        dice = rng.random()
        if dice < 0.35:
            version += 1
            batch = rng.sample(own, 8)
            store.mset([(k, stress_value(k, version, rng.randrange(16, 3000))) for k in batch])
            expected.update(dict.fromkeys(batch, version))
        elif dice < 0.45:
            batch = rng.sample(own, 4)
            store.mdelete(batch)
            expected.update(dict.fromkeys(batch, None))
        elif dice < 0.95:
            keys = rng.sample(own, 4) + rng.sample(everyone, 12)
            for key, value in zip(keys, store.mget(keys), strict=True):
                try:
                    got = None if value is None else check_stress_value(key, value)
                except AssertionError as exc:
                    violations.append(f"torn: {exc}")
                    continue
                if key.startswith(f"p{worker}:") and got != expected.get(key):
                    violations.append(f"lost: {key} is v{got}, v{expected.get(key)} was acked")
        else:
            listed = set(store.yield_keys(prefix=f"p{worker}:"))
            live = {k for k, v in expected.items() if v is not None}
            if listed != live:
                violations.append(f"listing: {sorted(listed ^ live)[:3]} differ")
    results.put((expected, operations, violations[:5], len(violations)))


# -- one proxy shared by many threads ---------------------------------------------------


def read_from_threads(store, keys: list[str], threads: int, ready, results) -> None:
    """Read ``keys`` (each holding its own name, encoded) from ``threads`` threads of
    this process through one proxy, until each call raises; report, per exception
    type, how many threads ended with it, and how many reads were wrong or missed a key
    written before the threads began."""
    import collections
    import threading

    ended: collections.Counter[str] = collections.Counter()
    wrong = [0]
    expected = [k.encode() for k in keys]
    started = threading.Barrier(threads + 1)

    def run(offset: int) -> None:
        batch = keys[offset::threads][:64]
        want = expected[offset::threads][:64]
        started.wait()
        try:
            while True:
                if store.mget(batch) != want:
                    wrong[0] += 1
        except Exception as exc:
            ended[type(exc).__name__] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    started.wait()
    ready.set()
    for worker in workers:
        worker.join()
    results.put((dict(ended), wrong[0]))


def bounded_writer(store, writer: int, rounds: int, results) -> None:
    """Overwrite group ``writer``'s 8 keys each round (a round tag in every value), with
    4 new filler keys beside them, so a bounded store keeps evicting; report how many
    acknowledged batches left the store over its bound."""
    over = 0
    group = [f"g{writer}:{j}" for j in range(8)]
    for r in range(rounds):
        tag = f"{r:08d}".encode()
        pairs = [(k, tag + b"v" * 1000) for k in group]
        pairs += [(f"f{writer}:{r}:{j}", tag + b"f" * 1000) for j in range(4)]
        store.mset(pairs)
        stats = store.stats()
        over += stats.bytes > stats.max_bytes
    results.put(f"over bound: {over}")


def group_reader(store, writers: int, done, results) -> None:
    """Read each writer's group until ``done``; report reads that saw two rounds of one
    group at once (a missing key is allowed: evicted by a later batch)."""
    torn = 0
    groups = [[f"g{w}:{j}" for j in range(8)] for w in range(writers)]
    while not done.is_set():
        for group in groups:
            tags = {v[:8] for v in store.mget(group) if v is not None}
            torn += len(tags) > 1
    results.put(f"torn groups: {torn}")


def read_keys(store, keys: list[str]) -> list:
    return store.mget(keys)


def read_some(store, seed: int) -> tuple[int, int]:
    """Read random batches of ``k0``..``k99``; the hits and misses seen."""
    rng = random.Random(seed)
    hits = misses = 0
    for _ in range(20):
        got = store.mget([f"k{rng.randrange(100)}" for _ in range(rng.randrange(1, 10))])
        hits += sum(v is not None for v in got)
        misses += sum(v is None for v in got)
    return hits, misses


def write_and_report(store, results) -> None:
    """Overwrite ``k`` and report what this process then reads of it."""
    store.mset([("k", b"child")])
    results.put(store.mget(["k"]))


def write_versions_forever(store, keys: list[str], progress) -> None:
    """Overwrite all ``keys`` in one batch per version until the store fails; report
    each batch done; exit 1 on StoreConnectionError."""
    import shmstore

    v = 0
    try:
        while True:
            store.mset([(k, value_for(k, v)) for k in keys])
            progress.put(v)
            v += 1
    except shmstore.StoreConnectionError:
        sys.exit(1)


def run_with_private_shm(script_text: str, size: str, directory, timeout_s: float):
    """Run ``script_text`` in a new Python whose /dev/shm is a private tmpfs of
    ``size`` (as ``16m``), in a mount namespace of its own; its CompletedProcess.
    Skips the calling test where that cannot be made (not root, no unshare)."""
    import subprocess

    import pytest

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to give /dev/shm a small size")
    script = directory / "script.py"
    script.write_text(script_text)
    mount = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "{sys.executable}" "{script}"'
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if "mount:" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"cannot make a private /dev/shm here: {done.stderr.strip()}")
    return done


def reader_against_writer(store, versions: int) -> tuple[int, int, int]:
    """A spawned reader of 64 keys while a spawned writer overwrites them all in one
    batch per version; the reader's (reads, mixed reads, versions seen). Both must
    exit cleanly."""
    ctx = multiprocessing.get_context("spawn")
    keys = [f"atomic:{i}" for i in range(64)]
    ready, done, results = ctx.Event(), ctx.Event(), ctx.SimpleQueue()
    reader = ctx.Process(target=read_batches, args=(store, keys, ready, done, results))
    writer = ctx.Process(target=write_versions, args=(store, keys, versions, ready, done))
    reader.start()
    writer.start()
    writer.join()
    seen = results.get()
    reader.join()
    results.close()
    assert (writer.exitcode, reader.exitcode) == (0, 0)
    return seen


def write_as_another_host(url: str, namespace: str, key: str, value: bytes, results) -> None:
    """Be another host: a store with a near cache of its own, which reads ``key``, writes
    ``value`` to it, and reads it back; puts (the time its write returned, on
    CLOCK_MONOTONIC, which every process of the machine shares; what it read before;
    what it read after) on ``results``, then closes."""
    import shmstore

    with shmstore.RedisByteStore(url, namespace=namespace, near_cache_bytes=1 << 20) as store:
        before = store.mget([key])
        store.mset([(key, value)])
        done = time.monotonic()
        results.put((done, before, store.mget([key])))


def near_cache_host(url: str, namespace: str, role: str) -> None:
    """One host of the network-namespace test, run as a script (``python -c``) inside a
    namespace of its own; talks to the test on stdin and stdout, one line each way.

    ``reader``: reads ``k`` (filling its near cache), says ``ready``, waits for a line,
    then reads until ``k`` is ``v2`` and says ``saw <µs> <near-cache hits>``.
    ``writer``: writes ``k`` = ``v2``, reads it back and says ``wrote <value>``.
    """
    import shmstore

    with shmstore.RedisByteStore(url, namespace=namespace, near_cache_bytes=1 << 20) as store:
        if role == "writer":
            store.mset([("k", b"v2")])
            print("wrote", store.mget(["k"])[0].decode(), flush=True)
            return
        store.mset([("k", b"v1")])
        while store.near_cache.get(["k"]) != [b"v1"]:
            store.mget(["k"])  # filled once this host's own write's report is in
        assert store.mget(["k"]) == [b"v1"]
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.monotonic()
        deadline = start + 10
        while store.mget(["k"]) != [b"v2"] and time.monotonic() < deadline:
            pass
        seen = store.mget(["k"])[0].decode()
        hits = store.near_cache.stats().hits
        print("saw", seen, int((time.monotonic() - start) * 1e6), hits, flush=True)


def write_group_versions(store, group: int, ready, stop) -> None:
    """Overwrite the keys of group ``group`` (64 of them) with one batch per version,
    each batch one version, until ``stop``; counts one on ``ready`` first."""
    keys = [f"g{group}:{i}" for i in range(64)]
    ready.release()
    version = 0
    while not stop.is_set():
        store.mset([(k, value_for(k, version)) for k in keys])
        version += 1
