"""The compiled lookup built with AddressSanitizer and fed random and hostile memory:
an index and arenas of random words, slots that name real keys with offsets and lengths
past the end of their arena, arena ids past the list, odd stripes; and its decoding of
mset request frames fed frames cut short and changed. Every Python object
is its own malloc block (PYTHONMALLOC=malloc), so a read one byte past an arena or an
index is reported and fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "shmstore", "_hot", "_chot.c")

DRIVER = textwrap.dedent(
    """
    import random, struct, sys, zlib
    sys.path.insert(0, sys.argv[1])
    import _chot
    from shmstore import _layout as L
    from shmstore._hot import fallback

    rng = random.Random(int(sys.argv[2]))
    KEYS = [b"", b"a", b"key", b"k" * 40, bytes(range(200))]
    for case in range(int(sys.argv[3])):
        arenas = [None] + [bytes(rng.randrange(0, 300)) if rng.random() < 0.9 else None
                           for _ in range(rng.randrange(0, 4))]
        capacity = rng.choice([1, 2, 4, 8, 16, 32, 3, 0])
        words = [rng.getrandbits(64) for _ in range(capacity * L.SLOT_WORDS)]
        for i in range(capacity):
            if rng.random() < 0.7:
                kb = rng.choice(KEYS)
                ref = rng.choice([0, 1, rng.randrange(len(arenas) + 2) << L.OFFSET_BITS
                                  | rng.randrange(0, 400)])
                vlen = rng.choice([0, 1, 7, 64, 299, 2**40, 2**64 - 1, rng.randrange(400)])
                expires = rng.choice([0, 0, 1000, 2**64 - 1])
                words[i * L.SLOT_WORDS : (i + 1) * L.SLOT_WORDS] = [
                    zlib.crc32(kb) | len(kb) << 32, ref, vlen, 0, expires]
        ctl = [0] * (L.CTL_BYTES // 8)
        ctl[L.W_INDEX_GEN] = rng.choice([5, 5, 5, 6])
        for kb in KEYS:
            ctl[L.HEADER_WORDS + (zlib.crc32(kb) & (L.STRIPES - 1))] = rng.choice([0, 2, 2, 3])
        ctl_view = memoryview(bytearray(struct.pack(f"{len(ctl)}Q", *ctl))).cast("Q")
        slots = memoryview(bytearray(struct.pack(f"{len(words)}Q", *words))).cast("Q")
        keys = [rng.choice(KEYS + [b"other", "k" * 40, "\\ud800"]) for _ in range(rng.randrange(7))]
        visited = None if rng.random() < 0.3 else bytes(rng.randrange(0, 40))
        now = rng.choice([0, 999, 1000, 2**64 - 1])
        marks = [None if visited is None else bytearray(visited) for _ in range(2)]
        got = _chot.lookup(ctl_view, slots, 5, arenas, keys, marks[0], now)
        want = fallback.lookup(ctl_view, slots, 5, arenas, keys, marks[1], now)
        assert (got, marks[0]) == (want, marks[1]), (case, got, want)

    # The mset request decodings: frames cut short, with bytes changed or added.
    from shmstore import _protocol as proto
    keys = ["key", "\\u00e9\\ud800", ""]
    for name, good in (
        ("parse_mset", proto.pack([proto.MSET, keys, [b"v" * 300, b"", b"x"], 2**40])),
        ("parse_mset_shm", proto.pack([proto.MSET_SHM, keys, "s12.34", [300, 0, 2**40], 5])),
    ):
        compiled, twin = getattr(_chot, name), getattr(fallback, name)
        for case in range(int(sys.argv[3])):
            frame = bytearray(good[: rng.randrange(len(good) + 1)])
            for _ in range(rng.randrange(4)):
                if frame:
                    frame[rng.randrange(len(frame))] = rng.randrange(256)
            frame = bytes(frame) + bytes(rng.randrange(3))
            got = compiled(frame)
            assert got is None or got == twin(frame), (name, case, frame)
    # A staged batch's copy: refs, lengths and sources of any size, in or out of range.
    for case in range(int(sys.argv[3])):
        source = bytes(rng.randrange(300))
        n = rng.randrange(5)
        refs = [1 << L.OFFSET_BITS | rng.randrange(300) for _ in range(n)]
        lengths = [rng.randrange(120) for _ in range(n)]
        keys = [b"k" * rng.randrange(20) for _ in range(n)]
        outcomes = []
        for impl in (_chot, fallback):
            arena = bytearray(256)
            try:
                impl.place_run([None, arena], refs, keys, source, lengths)
                outcomes.append(bytes(arena))
            except ValueError:
                outcomes.append("refused")
        # Refusals may differ (the twin checks a run's padded blocks), copies may not.
        assert "refused" in outcomes or outcomes[0] == outcomes[1], case
    # A batch of pairs taken apart: shapes the compiled path takes and shapes it leaves.
    for case in range(int(sys.argv[3])):
        shapes = [("k" * rng.randrange(3), bytes(rng.randrange(5))), ["k", b""], ("k",),
                  (b"k", b""), None]
        pairs = [rng.choice(shapes) for _ in range(rng.randrange(6))]
        got = _chot.split_bytes_pairs(pairs)
        assert got == fallback.split_bytes_pairs(pairs), (case, pairs)
    print("ok")
    """
)


def _libasan() -> str | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    path = subprocess.run(
        [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.skipif(_libasan() is None, reason="gcc with AddressSanitizer is not installed")
def test_lookup_and_decoding_under_address_sanitizer_read_nothing_outside_their_buffers(tmp_path):
    target = tmp_path / ("_chot" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        [
            "gcc", "-shared", "-fPIC", "-O1", "-g", "-fsanitize=address",
            "-fno-omit-frame-pointer", "-std=c11", f"-I{sysconfig.get_paths()['include']}",
            SOURCE, "-o", str(target),
        ],
        check=True,
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(
        os.environ,
        LD_PRELOAD=_libasan(),
        PYTHONMALLOC="malloc",
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=23",
        PYTHONPATH=os.path.join(HERE, ".."),
    )
    result = subprocess.run(
        [sys.executable, str(driver), str(tmp_path), "1", "3000"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
