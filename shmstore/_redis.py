"""The same store on Redis (or Valkey), for jobs on many hosts: :class:`RedisByteStore`
and :class:`RedisStore`, with ``InMemoryByteStore``'s semantics, exactly, as the
shared-memory stores have them.

Layout in Redis, for a store of namespace ``ns`` (every name starts with the same
hash tag, ``{ns}``, so one store lives in one slot of a Redis Cluster and its scripts
may touch all of it; many namespaces spread over the cluster)::

    shmstore:{ns}:v:<key>   a string: the value of <key> (the key as UTF-8,
                            surrogatepass), with PEXPIRE if it has a time to live
    shmstore:{ns}:o         a sorted set: each key, scored by its insertion number,
                            so keys are listed in insertion order, as a dict's
    shmstore:{ns}:n         a counter: the last insertion number given

``mset`` is one Lua script (atomic to every client of the server): each key whose
value does not exist (new, or expired) gets a new insertion number, then every value
is set, in order, so the last of a repeated key wins. ``mget`` is one ``MGET``.
``mdelete`` is ``DEL`` and ``ZREM`` in one ``MULTI``/``EXEC``. ``yield_keys`` is one
script: the sorted set in order, less the keys whose value has expired (removed from
the set as it goes), filtered with a plain prefix comparison, never a glob. An expired
key's member stays in the sorted set until the next listing or write of it.

With ``near_cache_bytes``, a local :class:`~shmstore._nearcache.NearCache` shared by the
processes of the host stands in front of the server; that module gives how reads,
writes and invalidations go through it, and what a reader sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ._batch import check_prefix, split_pairs
from ._batch import key_list as checked_keys
from ._codec import decode_msgpack, encode_bytes, encode_msgpack
from ._errors import (
    StoreClosedError,
    StoreConnectionError,
    StoreError,
    StorePermissionError,
)
from ._limits import Limits
from ._policy import ttl_ns

if TYPE_CHECKING:
    from ._nearcache import NearCache
    from ._store import SharedByteStore

try:
    from langchain_core.stores import BaseStore
except ImportError:  # shmstore works without LangChain; isinstance checks need it
    from ._basestore import BaseStore  # type: ignore[assignment]

__all__ = ["PASSWORD_ENV", "RedisByteStore", "RedisStore"]

V = TypeVar("V")

#: Where a proxy unpickled in another process finds the server's password (the
#: variable ``redis-cli`` reads too): a pickle never carries it.
PASSWORD_ENV = "REDISCLI_AUTH"

#: Options of the shared-memory stores that have no meaning on Redis.
_NOT_FOR_REDIS = {
    "name": "a Redis store is named by its namespace",
    "runtime_dir": "a Redis store has no local files",
    "segment_bytes": "a Redis store has no shared-memory segments",
    "max_store_bytes": "bound the server with Redis's maxmemory",
    "eviction_policy": "choose eviction with Redis's maxmemory-policy",
    "start_timeout_s": "a Redis store starts no manager",
}

_MSET = """
local n = #KEYS - 2
local ttl = tonumber(ARGV[1])
local first = redis.call('INCRBY', KEYS[2], n) - n
for i = 1, n do
  local vkey = KEYS[i + 2]
  if redis.call('EXISTS', vkey) == 0 then
    redis.call('ZADD', KEYS[1], first + i, ARGV[2 * i])
  end
  if ttl > 0 then
    redis.call('SET', vkey, ARGV[2 * i + 1], 'PX', ttl)
  else
    redis.call('SET', vkey, ARGV[2 * i + 1])
  end
end
return n
"""

# The near cache's read of a batch: the values and, for each, its time to live in ms
# (-1: none, -2: no such key), as of one moment.
_MGET_PTTL = """
local values, ttls = {}, {}
for i = 1, #KEYS do
  values[i] = redis.call('GET', KEYS[i])
  ttls[i] = redis.call('PTTL', KEYS[i])
end
return {values, ttls}
"""

# KEYS[1]: the sorted set; ARGV[1]: the value keys' prefix; ARGV[2]: the prefix to
# match ('' for all). Keys of the store all share its hash tag, so in a cluster the
# value keys read here are in the declared key's slot.
_KEYS = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
local found, gone = {}, {}
local prefix = ARGV[2]
local plen = #prefix
for _, member in ipairs(members) do
  if redis.call('EXISTS', ARGV[1] .. member) == 1 then
    if plen == 0 or string.sub(member, 1, plen) == prefix then
      found[#found + 1] = member
    end
  else
    gone[#gone + 1] = member
  end
end
for i = 1, #gone, 1000 do
  redis.call('ZREM', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
end
return found
"""


#: ``mset``'s ``ttl_s`` when not given: the store's default applies.
_STORE_TTL: Any = object()


def _encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


def _decode_key(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
        raise ValueError(
            f"namespace must be a non-empty str without braces (it becomes the keys' "
            f"hash tag), got {namespace!r}"
        )
    return namespace


def _without_password(url: str) -> tuple[str, bool]:
    """``url`` with any password taken out, and whether it had one."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url, False
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}@{host}" if user else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    # Spelled out, not urlunsplit: that drops the "//" of unix:///path when no host is left.
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}", True


def _store_error(exc: Exception, url: str) -> StoreError:
    """The shmstore error for a redis-py one."""
    import redis

    if isinstance(exc, redis.AuthenticationError) or (
        isinstance(exc, redis.ResponseError)
        and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return StorePermissionError(f"the Redis server at {url} refused these credentials: {exc}")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return StoreConnectionError(f"cannot reach the Redis server at {url}: {exc}")
    return StoreError(f"the Redis server at {url} answered with an error: {exc}")


class _RedisStoreBase(BaseStore[str, V]):
    """What the two Redis store classes share; they differ only in how values are
    encoded."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        ttl_s: float | None = None,
        max_value_bytes: int | None = None,
        max_batch_bytes: int | None = None,
        timeout_s: float = 5.0,
        near_cache_bytes: int | None = None,
        cluster: bool = False,
        **options: Any,
    ) -> None:
        for option in options:
            reason = _NOT_FOR_REDIS.get(option)
            if reason is None:
                raise TypeError(f"{type(self).__name__}() got an unexpected option {option!r}")
            raise ValueError(f"{option} does not apply to a Redis store: {reason}")
        if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if type(cluster) is not bool:
            raise ValueError(f"cluster must be True or False, got {cluster!r}")
        if cluster and near_cache_bytes is not None:
            raise ValueError(
                "near_cache_bytes does not apply to a Redis Cluster yet: the near cache "
                "follows one server's invalidations, and a cluster may move the store's "
                "slot to another"
            )
        self._cluster = cluster
        if near_cache_bytes is not None and (
            type(near_cache_bytes) is not int or near_cache_bytes < 1 << 20
        ):
            raise ValueError(
                f"near_cache_bytes must be None or an int of at least 1 MiB, "
                f"got {near_cache_bytes!r}"
            )
        self._namespace = _check_namespace(namespace)
        self._ttl_ns = ttl_ns(ttl_s)
        self._limits = Limits.resolve(max_value_bytes, max_batch_bytes)
        self._url = url
        self._timeout_s = float(timeout_s)
        self._public_url, self._had_password = _without_password(url)
        prefix = f"shmstore:{{{namespace}}}:".encode()
        self._values_prefix = prefix + b"v:"
        self._order_key = prefix + b"o"
        self._seq_key = prefix + b"n"
        self._client: Any = None
        # (event loop, client, (mset, keys, mget-pttl scripts)), made in the loop using it
        self._async: tuple[Any, Any, tuple[Any, Any, Any]] | None = None
        self._closed = False
        self._near: NearCache | None = None
        self._connect_sync()  # fails now, not at the first call, on a bad URL
        if near_cache_bytes is not None:
            from ._nearcache import NearCache

            try:
                with self._errors_mapped():  # the server's errors, as any call's
                    self._sync().ping()
                origin = {"url": url, "prefix": self._values_prefix, "timeout_s": self._timeout_s}
                self._near = NearCache(origin, near_cache_bytes)
            except BaseException:
                self.close()
                raise

    # -- connections ----------------------------------------------------------------

    def _connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "socket_timeout": self._timeout_s,
            "socket_connect_timeout": self._timeout_s,
        }
        if not self._cluster:
            options["retry_on_timeout"] = False
        return options

    def _connect_sync(self) -> None:
        import redis

        try:
            # redis-py's pools are fork-safe: a forked child opens its own connections.
            client: Any
            if self._cluster:
                from redis.cluster import RedisCluster

                client = RedisCluster.from_url(self._url, **self._connect_options())
            else:
                client = redis.Redis.from_url(self._url, **self._connect_options())
        except ValueError as exc:
            raise ValueError(f"not a Redis URL: {self._public_url!r} ({exc})") from None
        self._client = client
        self._mset_script = client.register_script(_MSET)
        self._keys_script = client.register_script(_KEYS)
        self._mget_pttl_script = client.register_script(_MGET_PTTL)

    def _sync(self) -> Any:
        if self._closed:
            raise StoreClosedError(f"Redis store {self._namespace!r} is closed")
        return self._client

    def _aclient(self) -> tuple[Any, Any, Any, Any]:
        """The asyncio client for the running loop (made on first use in each loop),
        and its mset, keys and mget-with-ttl scripts."""
        import redis.asyncio

        if self._closed:
            raise StoreClosedError(f"Redis store {self._namespace!r} is closed")
        loop = asyncio.get_running_loop()
        held = self._async
        if held is None or held[0] is not loop:
            client: Any
            if self._cluster:
                from redis.asyncio.cluster import RedisCluster

                client = RedisCluster.from_url(self._url, **self._connect_options())
            else:
                client = redis.asyncio.Redis.from_url(self._url, **self._connect_options())
            held = self._async = (
                loop,
                client,
                (
                    client.register_script(_MSET),
                    client.register_script(_KEYS),
                    client.register_script(_MGET_PTTL),
                ),
            )
        return (held[1], *held[2])

    def close(self) -> None:
        """Close this proxy's connections, sync and async; the data stays on the
        server. In the process that made the store, this also stops its near cache.
        Idempotent."""
        self._closed = True
        if self._near is not None:
            self._near.close()
        if self._client is not None:
            self._client.close()
            if self._cluster:
                # RedisCluster.close() leaves its nodes' pools connected (redis-py 8.1:
                # each node's client was given its pool, so does not close it).
                for node in self._client.get_nodes():
                    if node.redis_connection is not None:
                        node.redis_connection.connection_pool.disconnect()
        held, self._async = self._async, None
        if held is not None:
            _close_async_client(*held[:2])

    async def aclose(self) -> None:
        """Async :meth:`close`, from inside the event loop that used the store."""
        held, self._async = self._async, None
        self.close()
        if held is not None:
            await held[1].aclose()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # The URL without its password, the namespace and the options: an unpickled
        # proxy takes the password, if the server needs one, from $REDISCLI_AUTH.
        return (
            _rebuild,
            (
                type(self),
                self._public_url,
                self._had_password,
                self._namespace,
                self._ttl_ns,
                self._limits.max_value_bytes,
                self._limits.max_batch_bytes,
                self._timeout_s,
                self._near,
                self._cluster,
            ),
        )

    @property
    def near_cache(self) -> SharedByteStore | None:
        """The near cache, a local store whose :meth:`~shmstore.SharedByteStore.stats`
        give its hits, misses and evictions; ``None`` without ``near_cache_bytes``."""
        return self._near

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def url(self) -> str:
        """The server's URL, without its password."""
        return self._public_url

    # -- value encoding: overridden by the subclasses ---------------------------------

    def _encode_values(self, values: list[Any]) -> list[bytes]:
        raise NotImplementedError

    def _decode_values(self, values: list[bytes | None]) -> list[V | None]:
        raise NotImplementedError

    # -- request building -------------------------------------------------------------

    def _value_keys(self, keys: list[str]) -> list[bytes]:
        prefix = self._values_prefix
        return [prefix + _encode_key(k) for k in keys]

    def _mset_args(self, key_value_pairs: Iterable[Any], ttl_s: Any) -> _Write | None:
        ttl = self._ttl_ns if ttl_s is _STORE_TTL else ttl_ns(ttl_s)
        keys, values = split_pairs(key_value_pairs)
        encoded = self._encode_values(values)
        self._limits.check_batch(keys, list(map(len, encoded)))
        if not keys:
            return None
        members = [_encode_key(k) for k in keys]
        prefix = self._values_prefix
        script_keys = [self._order_key, self._seq_key] + [prefix + m for m in members]
        argv: list[Any] = [-(-ttl // 1_000_000) if ttl else 0]  # ms, rounded up
        for member, value in zip(members, encoded, strict=True):
            argv.append(member)
            argv.append(value)
        return _Write(script_keys, argv, keys)

    def _fill_from(
        self, keys: list[str], reply: list[Any], seen: int
    ) -> list[bytes | None]:
        """The values of a ``_MGET_PTTL`` reply, handed to the near cache first: the
        ones found, living as long as the shortest time to live among them."""
        values: list[bytes | None] = reply[0]
        ttls: list[int] = reply[1]
        found = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
        if found and self._near is not None:
            lives = [ms for ms in ttls if ms > 0]
            self._near.fill(
                [k for k, _ in found],
                [v for _, v in found],
                min(lives) * 1_000_000 if lives else 0,
                seen,
            )
        return values

    @contextlib.contextmanager
    def _errors_mapped(self) -> Iterator[None]:
        """Turn redis-py's errors (and the socket's) into the StoreError hierarchy;
        around a sync call or an ``await`` alike."""
        import redis

        try:
            yield
        except StoreError:
            raise  # ours already (StoreConnectionError is an OSError too)
        except (redis.RedisError, OSError) as exc:
            raise _store_error(exc, self._public_url) from exc

    # -- the BaseStore interface ------------------------------------------------------

    def mget(self, keys: Iterable[str]) -> list[V | None]:
        """As :meth:`SharedByteStore.mget <shmstore.SharedByteStore.mget>`: one
        ``MGET``, all of an ``mset`` or none of it.

        :raises InvalidKeyError: a key is not a ``str`` (nothing is sent).
        :raises StoreConnectionError: the server cannot be reached within ``timeout_s``.
        """
        key_list = checked_keys(keys)
        client = self._sync()
        if not key_list:
            return []
        near = self._near
        if near is None:
            with self._errors_mapped():
                values = client.mget(self._value_keys(key_list))
            return self._decode_values(values)
        local = near.get(key_list)
        if None not in local:
            return self._decode_values(local)
        seen = near.invalidation_seq()  # before the server is read: see _nearcache
        with self._errors_mapped():
            reply = self._mget_pttl_script(keys=self._value_keys(key_list), client=client)
        return self._decode_values(self._fill_from(key_list, reply, seen))

    def mset(self, key_value_pairs: Iterable[tuple[str, V]], *, ttl_s: Any = _STORE_TTL) -> None:
        """As :meth:`SharedByteStore.mset <shmstore.SharedByteStore.mset>`: one script,
        atomic to every client of the server. ``ttl_s``: as there (the deadline is the
        server's, in whole milliseconds, rounded up).

        :raises InvalidBatchError: an item is not a pair or its key not a ``str``.
        :raises LimitExceededError: a value or the batch is over its limit.
        :raises StoreConnectionError: the server cannot be reached; if raised after the
            request was sent, the batch was applied whole or not at all.
        """
        write = self._mset_args(key_value_pairs, ttl_s)
        client = self._sync()
        if write is None:
            return
        near = self._near
        if near is not None:
            near.invalidate(write.keys)  # see _nearcache: before and after the server
        with self._errors_mapped():
            self._mset_script(keys=write.script_keys, args=write.argv, client=client)
        if near is not None:
            near.invalidate(write.keys)

    def mdelete(self, keys: Iterable[str]) -> None:
        """As :meth:`SharedByteStore.mdelete <shmstore.SharedByteStore.mdelete>`:
        ``DEL`` and ``ZREM`` in one ``MULTI``/``EXEC``."""
        key_list = checked_keys(keys)
        client = self._sync()
        if not key_list:
            return

        with self._errors_mapped(), client.pipeline(transaction=True) as pipe:
            pipe.delete(*self._value_keys(key_list))
            pipe.zrem(self._order_key, *map(_encode_key, key_list))
            pipe.execute()
        if self._near is not None:
            self._near.invalidate(key_list)

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """As :meth:`SharedByteStore.yield_keys <shmstore.SharedByteStore.yield_keys>`:
        in insertion order, plain ``startswith`` matching, as of one moment (one
        script, run when iteration starts)."""
        check_prefix(prefix)
        client = self._sync()
        with self._errors_mapped():
            found = self._keys_script(
                keys=[self._order_key],
                args=[self._values_prefix, _encode_key(prefix or "")],
                client=client,
            )
        yield from map(_decode_key, found)

    async def amget(self, keys: Iterable[str]) -> list[V | None]:
        """Native async :meth:`mget`, on ``redis.asyncio``."""
        key_list = checked_keys(keys)
        client, _, _, mget_pttl_script = self._aclient()
        if not key_list:
            return []
        near = self._near
        if near is None:
            with self._errors_mapped():
                values = await client.mget(self._value_keys(key_list))
            return self._decode_values(values)
        # The near cache's own requests are local round trips of tens of microseconds,
        # made inline; only the server is awaited.
        local = near.get(key_list)
        if None not in local:
            return self._decode_values(local)
        seen = near.invalidation_seq()
        with self._errors_mapped():
            reply = await mget_pttl_script(keys=self._value_keys(key_list), client=client)
        return self._decode_values(self._fill_from(key_list, reply, seen))

    async def amset(
        self, key_value_pairs: Iterable[tuple[str, V]], *, ttl_s: Any = _STORE_TTL
    ) -> None:
        """Native async :meth:`mset`."""
        write = self._mset_args(key_value_pairs, ttl_s)
        client, mset_script, _, _ = self._aclient()
        if write is None:
            return
        near = self._near
        if near is not None:
            near.invalidate(write.keys)
        with self._errors_mapped():
            await mset_script(keys=write.script_keys, args=write.argv, client=client)
        if near is not None:
            near.invalidate(write.keys)

    async def amdelete(self, keys: Iterable[str]) -> None:
        """Native async :meth:`mdelete`."""
        key_list = checked_keys(keys)
        client, _, _, _ = self._aclient()
        if not key_list:
            return

        with self._errors_mapped():
            async with client.pipeline(transaction=True) as pipe:
                pipe.delete(*self._value_keys(key_list))
                pipe.zrem(self._order_key, *map(_encode_key, key_list))
                await pipe.execute()
        if self._near is not None:
            self._near.invalidate(key_list)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        """Native async :meth:`yield_keys`."""
        check_prefix(prefix)
        client, _, keys_script, _ = self._aclient()
        with self._errors_mapped():
            found = await keys_script(
                keys=[self._order_key],
                args=[self._values_prefix, _encode_key(prefix or "")],
                client=client,
            )
        for raw in found:
            yield _decode_key(raw)


class _Write(NamedTuple):
    """An ``mset`` ready to send: the script's keys and arguments, and the batch's keys
    for the near cache."""

    script_keys: list[bytes]
    argv: list[Any]
    keys: list[str]


def _close_async_client(loop: Any, client: Any) -> None:
    """Close an asyncio client's connections from outside its loop: through the loop
    if it can still run, else by closing their sockets (a closed loop never will)."""
    if loop.is_closed():
        if hasattr(client, "get_nodes"):  # a cluster client: connections per node
            connections = [c for node in client.get_nodes() for c in node._connections]
        else:
            pool = client.connection_pool
            connections = [*pool._available_connections, *pool._in_use_connections]
        for connection in connections:
            writer = getattr(connection, "_writer", None)
            sock = getattr(getattr(writer, "transport", None), "_sock", None)
            if sock is not None:
                sock.close()
    elif loop.is_running():
        loop.create_task(client.aclose())
    else:
        loop.run_until_complete(client.aclose())


class RedisByteStore(_RedisStoreBase[bytes]):
    """A ``str -> bytes`` store on a Redis (or Valkey) server, with the semantics of
    ``InMemoryByteStore`` and :class:`~shmstore.SharedByteStore`, for processes on
    any number of hosts.

    :param url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
        ``unix:///path/to.sock[?db=N&password=...]``.
    :param namespace: the store's name on the server: a non-empty ``str`` without
        braces. Every key of the store shares the hash tag ``{namespace}``, so one
        store lives in one slot of a Redis Cluster.
    :param cluster: ``True`` for a Redis Cluster, ``url`` naming any of its nodes
        (redis-py's ``RedisCluster``, which follows the store's slot to whichever node
        holds it). Default ``False``.
    :param ttl_s: as for :class:`~shmstore.SharedByteStore` (deadlines on the
        server's clock, in milliseconds).
    :param max_value_bytes: largest value (default 512 MiB, Redis's own limit).
    :param max_batch_bytes: largest ``mset`` (default 1 GiB).
    :param timeout_s: seconds to connect, and to wait for any reply (default 5):
        an unreachable or stalled server raises :class:`StoreConnectionError` then.
    :param near_cache_bytes: if given (an ``int``, at least 1 MiB), a near cache of at
        most that many bytes of keys and values, in shared memory, in front of the
        server: a :class:`~shmstore.SharedByteStore` with SIEVE eviction, shared by this
        process and every process it hands the store to (pickled or forked), whose
        manager follows the server's invalidations (Redis 6 or newer). Reads it holds
        make no request at all. What a reader sees is in the README's "A near cache";
        it stops when this store is closed in the process that made it.
    :raises ValueError: a bad URL, namespace or option, or an option of the
        shared-memory stores that does not apply here (it says why).

    Pickling gives a handle (the URL without its password, the namespace and the
    options); the process that unpickles it connects on its own, taking the password
    from ``$REDISCLI_AUTH`` if the server needs one. A forked child never uses its
    parent's connections.
    """

    def _encode_values(self, values: list[Any]) -> list[bytes]:
        return encode_bytes(values)

    def _decode_values(self, values: list[bytes | None]) -> list[bytes | None]:
        return values


class RedisStore(_RedisStoreBase[Any]):
    """A ``str -> value`` store on Redis, values msgpack-encoded exactly as
    :class:`~shmstore.SharedStore` keeps them; otherwise as :class:`RedisByteStore`."""

    def _encode_values(self, values: list[Any]) -> list[bytes]:
        return encode_msgpack(values)

    def _decode_values(self, values: list[bytes | None]) -> list[Any]:
        return decode_msgpack(values)


def _rebuild(
    cls: type[_RedisStoreBase[Any]],
    url: str,
    had_password: bool,
    namespace: str,
    ttl: int,
    max_value_bytes: int,
    max_batch_bytes: int,
    timeout_s: float,
    near: NearCache | None = None,
    cluster: bool = False,
) -> Any:
    if had_password:
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise StorePermissionError(
                f"this Redis store's server needs a password, and a pickled store never "
                f"carries one: set ${PASSWORD_ENV} in this process's environment"
            )
        parts = urllib.parse.urlsplit(url)
        user = urllib.parse.quote(parts.username or "", safe="")
        at = parts.netloc.rpartition("@")[2]
        netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{at}"
        query = f"?{parts.query}" if parts.query else ""
        url = f"{parts.scheme}://{netloc}{parts.path}{query}"
    store = cls(
        url,
        namespace=namespace,
        max_value_bytes=max_value_bytes,
        max_batch_bytes=max_batch_bytes,
        timeout_s=timeout_s,
        cluster=cluster,
    )
    store._ttl_ns = ttl
    store._near = near  # the owner's near cache, shared, not a new one
    return store
