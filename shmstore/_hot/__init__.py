"""The hot functions, twice: ``_chot`` (compiled from ``_chot.c`` by ``pip install``)
and :mod:`~shmstore._hot.fallback` (pure Python), with the same signatures and results.

Chosen at import, as msgpack-python chooses ``_cmsgpack`` or ``fallback``:

* ``SHMSTORE_PUREPYTHON=1`` in the environment: the pure-Python functions;
* otherwise the compiled ones, or, where they were not built (no compiler at install
  time), the pure-Python ones; ``SHMSTORE_REQUIRE_NATIVE=1`` turns that case into an
  ``ImportError``, so a test run can never test only the fallback by accident.

:data:`IMPLEMENTATION` (``"c"`` or ``"python"``) is this process's choice. A store's
owner passes its choice to the manager and to every proxy of the store
(:mod:`shmstore._options`), which take their functions from :func:`load`.
"""

from __future__ import annotations

import os
from types import ModuleType

from . import fallback

__all__ = ["IMPLEMENTATION", "IMPLEMENTATIONS", "forced_pure_python", "load"]

IMPLEMENTATIONS = ("c", "python")

_TRUE = {"1", "true", "yes", "on"}


def forced_pure_python() -> bool:
    """Whether ``SHMSTORE_PUREPYTHON`` asks for the pure-Python functions, now."""
    return os.environ.get("SHMSTORE_PUREPYTHON", "").lower() in _TRUE


def _compiled() -> ModuleType | None:
    try:
        from . import _chot  # type: ignore[attr-defined]
    except ImportError:
        if os.environ.get("SHMSTORE_REQUIRE_NATIVE", "").lower() in _TRUE:
            raise
        return None
    return _chot  # type: ignore[no-any-return]


_CHOT = None if forced_pure_python() else _compiled()

#: ``"c"`` or ``"python"``: the hot functions this process uses by default.
IMPLEMENTATION = "c" if _CHOT is not None else "python"


def load(implementation: str) -> ModuleType:
    """The module of hot functions named ``implementation`` (``"c"`` or ``"python"``).
    ``"c"`` where it was not built gives the pure-Python one, unless
    ``SHMSTORE_REQUIRE_NATIVE=1``.

    :raises ValueError: an unknown name.
    :raises ImportError: ``"c"`` is not built and ``SHMSTORE_REQUIRE_NATIVE=1``.
    """
    if implementation == "python":
        return fallback
    if implementation != "c":
        raise ValueError(f"implementation must be 'c' or 'python', got {implementation!r}")
    return _CHOT or _compiled() or fallback
