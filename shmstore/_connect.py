"""``shmstore.connect(url)``: one call that gives the store a URL names, so the same
job code runs on one machine or many by changing a string."""

from __future__ import annotations

import urllib.parse
from typing import Any

__all__ = ["connect"]

_REDIS_SCHEMES = ("redis", "rediss", "unix")


def connect(url: str, **options: Any) -> Any:
    """The store ``url`` names, as a ``str -> bytes`` store:

    * ``shm://NAME``: attach to the running local store ``NAME``
      (:meth:`SharedByteStore.attach <shmstore.SharedByteStore.attach>`);
    * ``redis://``, ``rediss://`` (TLS), ``unix:///path.sock``: a
      :class:`~shmstore.RedisByteStore`, its namespace the URL's ``?namespace=``
      parameter (required), on a Redis Cluster with ``&cluster=true`` (both taken
      out of the URL the server sees).

    :param options: passed to the store's constructor (``ttl_s``, the limits, ...).
    :raises ValueError: an unknown scheme, or a Redis URL without a namespace.
    :raises StoreNotFoundError: no local store has that name.
    :raises StoreConnectionError: the store's manager or server cannot be reached.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "shm":
        from ._store import SharedByteStore

        name = parts.netloc or parts.path.lstrip("/")
        if not name or options.keys() - {"runtime_dir"}:
            raise ValueError(
                f"a shm:// URL names a running store, shm://NAME, and takes only "
                f"runtime_dir; got {url!r} with {sorted(options)}"
            )
        return SharedByteStore.attach(name, **options)
    if parts.scheme in _REDIS_SCHEMES:
        from ._redis import RedisByteStore

        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        namespaces = [value for key, value in query if key == "namespace"]
        if len(namespaces) != 1:
            raise ValueError(f"a Redis URL needs one ?namespace= parameter, got {url!r}")
        clusters = [value.lower() for key, value in query if key == "cluster"]
        if clusters:
            if clusters not in (["true"], ["false"], ["1"], ["0"]):
                raise ValueError(f"a Redis URL's ?cluster= is true or false, got {url!r}")
            options = {**options, "cluster": clusters[0] in ("true", "1")}
        rest = urllib.parse.urlencode(
            [(k, v) for k, v in query if k not in ("namespace", "cluster")]
        )
        # Spelled out, not urlunsplit: that drops the "//" of unix:///path.
        server = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
        return RedisByteStore(server, namespace=namespaces[0], **options)
    raise ValueError(
        f"unknown store URL scheme {parts.scheme!r} in {url!r}: use shm://NAME, "
        "redis://, rediss:// or unix://"
    )
