"""Faults injected for real, with signals, at varied moments: a killed writer, reader or
manager, and Ctrl-C in the middle of calls. Victims report each step through a pipe,
and the test signals them the moment a randomly chosen step is reported, so the signal
lands in a different phase of a call each time, with no sleep deciding when."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal

import pytest

import shmstore
from tests import _workers

_ctx = multiprocessing.get_context("spawn")


def _start(target, *args):
    progress_r, progress_w = _ctx.Pipe(duplex=False)
    process = _ctx.Process(target=target, args=(*args, progress_w))
    process.start()
    progress_w.close()
    return process, progress_r


def _kill_at_step(process, progress, step: int) -> None:
    while progress.recv() < step:
        pass
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    progress.close()


def _staging_segments(store, pid: int) -> list[str]:
    prefix = f"{store._paths.segment_prefix.lstrip('/')}s{pid}."
    return [e for e in os.listdir("/dev/shm") if e.startswith(prefix)]


def _check_groups_whole(store) -> None:
    for group in range(8):
        keys = _workers.stress_keys(group, 16)
        values = store.mget(keys)
        present = [v for v in values if v is not None]
        assert len(present) in (0, len(keys)), f"half a batch in group {group}"
        if present:
            versions = {
                _workers.check_stress_value(k, v) for k, v in zip(keys, values, strict=True)
            }
            assert len(versions) == 1, f"versions {versions} mixed in group {group}"


@pytest.mark.parametrize("seed", range(6))
def test_writer_killed_mid_mset_leaves_whole_batches_and_no_segments(byte_store, seed):
    step = random.Random(seed).randrange(1, 40)
    writer, progress = _start(_workers.write_groups_until_killed, byte_store, 3)
    _kill_at_step(writer, progress, step)
    assert writer.exitcode == -signal.SIGKILL
    _check_groups_whole(byte_store)
    assert _workers.eventually(lambda: not _staging_segments(byte_store, writer.pid), within_s=5)
    byte_store.mset([("after", b"ok")])  # the manager serves on
    assert byte_store.mget(["after"]) == [b"ok"]


def test_writer_killed_between_staging_and_sending_leaves_no_segment(byte_store):
    ours, theirs = _ctx.Pipe()
    writer = _ctx.Process(target=_workers.stage_then_report, args=(byte_store, theirs))
    writer.start()
    segment = ours.recv()
    assert os.path.exists(f"/dev/shm{segment}")
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    ours.close()
    theirs.close()
    assert _workers.eventually(lambda: not os.path.exists(f"/dev/shm{segment}"), within_s=5)
    assert byte_store.mget(["staged"]) == [None]


@pytest.mark.parametrize("seed", range(3))
def test_reader_killed_mid_read_leaves_nothing_to_clean(byte_store, seed):
    byte_store.mset([(k, b"v") for k in _workers.stress_keys(0, 16)])
    reader, progress = _start(_workers.read_until_killed, byte_store)
    _kill_at_step(reader, progress, random.Random(seed).randrange(1, 200))
    byte_store.mset([("after", b"ok")])
    assert byte_store.mget(["after"]) == [b"ok"]


def test_call_in_flight_fails_promptly_when_the_manager_is_killed(byte_store):
    results_r, results_w = _ctx.Pipe(duplex=False)
    caller, progress = _start(_workers.call_until_manager_dies, byte_store, results_w)
    results_w.close()
    while progress.recv() < 3:
        pass
    os.kill(byte_store.manager_pid, signal.SIGKILL)
    # The pytest timeout bounds this: a hang fails the test.
    assert results_r.recv() == "StoreConnectionError"
    caller.join()
    progress.close()
    results_r.close()
    with pytest.raises(shmstore.StoreConnectionError):
        byte_store.mget(["big0"])


def test_ctrl_c_mid_call_never_leaves_the_proxy_out_of_step(byte_store):
    # One signal at a time: two pending SIGINTs would merge into one, so the next is sent
    # only once the last has been handled, i.e. the victim reports it caught, or (should
    # it have landed in a finalizer, which swallows it) 20 rounds have passed. The victim
    # keeps calling the store until told to stop, so no signal lands after its loop.
    control_r, control_w = _ctx.Pipe(duplex=False)
    victim, progress = _start(_workers.survive_interrupts, byte_store, control_r)
    control_r.close()
    rng = random.Random(7)
    sent = caught = 0

    def let_rounds_pass(rounds: int) -> None:
        nonlocal caught
        _, first, caught = progress.recv()
        n = first
        while (caught < sent and n < first + 20) or n < first + rounds:
            _, n, caught = progress.recv()

    for _ in range(25):
        let_rounds_pass(rng.randrange(1, 8))  # so each signal lands somewhere new
        os.kill(victim.pid, signal.SIGINT)
        sent += 1
    let_rounds_pass(1)
    control_w.send("stop")
    while (message := progress.recv())[0] != "done":
        pass
    _, interrupts, wrong = message
    victim.join()
    progress.close()
    control_w.close()
    assert victim.exitcode == 0
    assert interrupts > sent // 2  # the signals really landed inside calls, and were caught
    assert wrong == 0
