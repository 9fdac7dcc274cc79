"""The data-path options of a store: which paths its values take and which hot
functions every process of it runs.

They are read from the owner's environment when the store is created, sent to the
manager in its configuration, and published in the store's header
(:mod:`shmstore._layout`), from which every proxy of the store, in any process, takes
them. So a variable set in the owner reaches the manager, spawned and forked workers
and processes that attach by name alike, and a test selects a data path by setting
the variable before it creates a store, not by patching a module.

* ``SHMSTORE_PUREPYTHON=1``: the pure-Python hot functions (default: the compiled ones
  where built; see :mod:`shmstore._hot`);
* ``SHMSTORE_DIRECT_READS=0``: every read is a request to the manager (default: proxies
  read shared memory themselves, on x86-64, where the layout's argument holds);
* ``SHMSTORE_STAGE_BYTES=N``: an ``mset`` whose values add up to at least N bytes goes
  through a staging segment (default 65536; 0 stages every batch).
"""

from __future__ import annotations

import os
import platform
from collections import namedtuple

from . import _hot
from . import _layout as L

__all__ = ["DIRECT_READS_POSSIBLE", "Options"]

#: Whether this CPU keeps the memory order direct reads rely on (see _layout).
DIRECT_READS_POSSIBLE = platform.machine().lower() in {"x86_64", "amd64"}

# Staged from 64 KiB: a batch of 64 embeddings (100 kB) then reaches the manager as
# a 3 kB request, its values copied once, through shared memory. Measured in one run
# (python -m benchmarks.bench_stores, overwrites of 1.5 kB values in batches of 64):
# four writers 746k keys/s staged against 547k on the socket, one writer 619k against
# 699k; concurrent writers are a shared cache's working state.
_DEFAULT_STAGE_BYTES = 64 << 10
_FALSE = {"0", "false", "no", "off"}

# A named tuple, as Limits: the manager imports this module and keeps its memory small.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple

    class _Fields(NamedTuple):
        direct_reads: bool
        stage_bytes: int
        implementation: str
else:
    _Fields = namedtuple("Options", ["direct_reads", "stage_bytes", "implementation"])


class Options(_Fields):
    """``direct_reads`` (bool), ``stage_bytes`` (int, bytes), ``implementation``
    (``"c"`` or ``"python"``); see the module docstring."""

    __slots__ = ()

    @classmethod
    def from_environment(cls) -> Options:
        """This process's options, from its environment.

        :raises ValueError: ``SHMSTORE_STAGE_BYTES`` is not a non-negative integer.
        """
        raw = os.environ.get("SHMSTORE_STAGE_BYTES", str(_DEFAULT_STAGE_BYTES))
        try:
            stage_bytes = int(raw)
        except ValueError:
            stage_bytes = -1
        if stage_bytes < 0:
            raise ValueError(f"SHMSTORE_STAGE_BYTES must be a non-negative integer, got {raw!r}")
        direct = os.environ.get("SHMSTORE_DIRECT_READS", "1").lower() not in _FALSE
        # Read now, not at import: the store carries the owner's current choice.
        pure = _hot.forced_pure_python() or _hot.load("c") is _hot.fallback
        implementation = "python" if pure else "c"
        return cls(direct and DIRECT_READS_POSSIBLE, stage_bytes, implementation)

    def publish(self, header: memoryview) -> None:
        """Write these options into a store's header words."""
        header[L.W_DIRECT_READS] = int(self.direct_reads)
        header[L.W_STAGE_BYTES] = self.stage_bytes
        header[L.W_IMPLEMENTATION] = _hot.IMPLEMENTATIONS.index(self.implementation)

    @classmethod
    def read(cls, header: memoryview) -> Options:
        """The options published in a store's header; direct reads only where this CPU
        allows them."""
        implementation = _hot.IMPLEMENTATIONS[min(header[L.W_IMPLEMENTATION], 1)]
        return cls(
            bool(header[L.W_DIRECT_READS]) and DIRECT_READS_POSSIBLE,
            header[L.W_STAGE_BYTES],
            implementation,
        )
