"""The ``shmstore`` command as a user runs it: the installed command, in subprocesses.
A ``serve`` in one process; ``put``, ``get``, ``keys``, ``stats``, ``ls``, ``delete``
and ``stop`` from others, their ``--json`` parsed; exit codes; a snapshot across two
serves; SIGTERM; a damaged snapshot."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("rich")

COMMAND = os.path.join(os.path.dirname(sys.executable), "shmstore")


def _shmstore(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [COMMAND, *args], input=stdin, capture_output=True, timeout=120
    )


class _Served:
    """``shmstore serve NAME ...`` in a subprocess, ready once it said so."""

    def __init__(self, name: str, *options: str) -> None:
        self.process = subprocess.Popen(
            [COMMAND, "serve", name, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.first_line = self.process.stdout.readline().decode().strip()

    def finish(self, timeout_s: float = 60) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout_s)
        return self.process.returncode, out.decode(), err.decode()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


@pytest.fixture
def served():
    made = []

    def serve(name: str, *options: str) -> _Served:
        made.append(_Served(name, *options))
        return made[-1]

    yield serve
    for s in made:
        s.kill()


def test_serve_then_look_inside_from_other_processes(served, tmp_path):
    snapshot = tmp_path / "cli.snap"
    server = served("cli-demo", "--max-bytes", "16MiB", "--eviction-policy", "sieve",
                    "--snapshot", str(snapshot))
    assert server.first_line == "ready cli-demo"
    assert _shmstore("put", "cli-demo", "greeting", "hello").returncode == 0
    assert _shmstore("put", "cli-demo", "blob", "-", stdin=b"\x00\xffbytes").returncode == 0
    got = _shmstore("get", "cli-demo", "blob")
    assert (got.returncode, got.stdout) == (0, b"\x00\xffbytes")
    missing = _shmstore("get", "cli-demo", "nope")
    assert missing.returncode == 3 and b"no key 'nope'" in missing.stderr
    keys = _shmstore("keys", "cli-demo", "--json")
    assert json.loads(keys.stdout) == ["greeting", "blob"]
    assert json.loads(_shmstore("keys", "cli-demo", "--json", "--prefix", "g").stdout) == [
        "greeting"
    ]
    assert json.loads(_shmstore("keys", "cli-demo", "--json", "--limit", "1").stdout) == [
        "greeting"
    ]
    stats = json.loads(_shmstore("stats", "cli-demo", "--json").stdout)
    assert stats["keys"] == 2 and stats["max_bytes"] == 16 << 20 and stats["hits"] >= 1
    listed = json.loads(_shmstore("ls", "--json").stdout)
    assert [(s["name"], s["keys"], s["snapshot"]) for s in listed] == [
        ("cli-demo", 2, str(snapshot))
    ]
    table = _shmstore("stats", "cli-demo")
    assert table.returncode == 0 and b"16.0 MiB" in table.stdout  # for people: units
    assert _shmstore("delete", "cli-demo", "greeting", "not-there").returncode == 0
    stopped = _shmstore("stop", "cli-demo")
    assert stopped.returncode == 0
    code, out, _ = server.finish()
    assert (code, out.strip()) == (0, "stopped cli-demo")
    assert _shmstore("ls", "--json").stdout.strip() == b"[]"  # every file is gone
    # The snapshot saved at the stop starts the next serve.
    again = served("cli-demo", "--snapshot", str(snapshot))
    assert again.first_line == "ready cli-demo"
    assert json.loads(_shmstore("keys", "cli-demo", "--json").stdout) == ["blob"]
    again.process.send_signal(signal.SIGTERM)
    code, out, _ = again.finish()
    assert (code, out.strip()) == (0, "stopped cli-demo")


def test_no_such_store_is_exit_code_one_with_one_line(tmp_path):
    for args in (["stats", "absent"], ["keys", "absent"], ["get", "absent", "k"],
                 ["stop", "absent"], ["put", "absent", "k", "v"]):
        done = _shmstore(*args)
        assert done.returncode == 1, args
        assert done.stderr.decode().count("\n") == 1 and "absent" in done.stderr.decode()


def test_a_name_taken_or_a_damaged_snapshot_fails_the_serve_clearly(served, tmp_path):
    first = served("taken")
    assert first.first_line == "ready taken"
    second = served("taken")
    code, _, err = second.finish()
    assert code == 4 and "taken" in err
    _shmstore("stop", "taken")
    first.finish()
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a snapshot at all")
    damaged = served("damaged", "--snapshot", str(bad))
    code, _, err = damaged.finish()
    assert code == 4 and str(bad) in err and "not a shmstore snapshot" in err
