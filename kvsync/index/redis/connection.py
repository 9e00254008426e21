"""Talking to Redis: a cluster or a single node behind one small surface. I/O (redis-py).

``open_nodes(settings)`` connects with the official client — ``redis.cluster.RedisCluster`` when
the seed is a cluster node, ``redis.Redis`` otherwise — with the password read from a file (as a
Kubernetes Secret is mounted) and TLS for ``rediss://`` URLs, and loads the function library
(``kvsync.index.redis.functions``) into every primary whose version differs. ``Nodes`` gives the
backend what it needs of either: one-key commands and functions routed by key, a pipeline, and
the node serving a key (lookups send one call per node and read the replies together, so the
nodes work in parallel). redis-py's errors are wrapped here as ``IndexUnavailableError`` with the
reason a reader can act on.
"""

import contextlib
import ssl
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from kvsync.errors import ConfigError, IndexUnavailableError
from kvsync.index.backend import RedisSettings
from kvsync.index.redis.functions import LIBRARY, VERSION

T = TypeVar("T")
_ERRORS: Final = (RedisError, RedisClusterException)  # the second is not a RedisError
Client = redis.Redis | RedisCluster
_NOT_A_CLUSTER: Final = (
    "cluster mode is not enabled",
    "cluster support disabled",
    "unknown command",
)


class Nodes:
    """A connected client and the nodes behind it (one, for a single Redis)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)

    def node_of(self, key: str) -> Any:
        """An opaque handle of the node serving ``key`` (equal handles: the same node)."""
        if isinstance(self.client, RedisCluster):
            slot = self.client.keyslot(key)
            return self.client.nodes_manager.get_node_from_slot(slot)
        return None

    def connection_for(self, node: Any) -> redis.Redis:
        if isinstance(self.client, RedisCluster):
            assert isinstance(node, ClusterNode)  # noqa: S101  # from node_of
            found = self.client.get_redis_connection(node)
            assert found is not None  # noqa: S101  # a node of the current map has one
            return found
        return self.client

    def call_on_each(self, calls: Sequence[tuple[Any, Sequence[object]]]) -> list[Any]:
        """Run one command per (node, args), all sent before any reply is read: the nodes run
        them at the same time. Replies in order; raises ``IndexUnavailableError``."""
        sent = []
        try:
            for node, args in calls:
                pool = self.connection_for(node).connection_pool
                conn = pool.get_connection()
                sent.append((pool, conn))
                conn.send_command(*args)
            return [conn.read_response() for _, conn in sent]
        except _ERRORS as exc:
            for _, conn in sent:
                conn.disconnect()  # a reply may still be in flight on it
            self.recover(exc)
            raise unavailable(exc) from exc
        finally:
            for pool, conn in sent:
                pool.release(conn)

    def recover(self, exc: BaseException) -> None:
        """After a failed call, so the retry can work: re-read the cluster's slot map (a
        failover, a moved slot) and load the library again where a node lost it (a node
        restarted empty, a new primary)."""
        with contextlib.suppress(*_ERRORS):  # still unreachable: the next call says so
            if isinstance(self.client, RedisCluster):
                self.client.nodes_manager.initialize()
            if "function not found" in str(exc).lower():
                self.load_library()

    def guarded(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except _ERRORS as exc:
            self.recover(exc)
            raise unavailable(exc) from exc

    def close(self) -> None:
        self.client.close()

    def load_library(self) -> None:
        """``FUNCTION LOAD REPLACE`` on every primary whose library is missing or older."""
        for conn in self._primaries():
            try:
                current = conn.fcall_ro("kvsync_version", 0)
            except redis.ResponseError:
                current = None
            if current != VERSION.encode():
                conn.function_load(LIBRARY, replace=True)

    def _primaries(self) -> Iterable[redis.Redis]:
        if isinstance(self.client, RedisCluster):
            for node in self.client.get_primaries():
                yield self.connection_for(node)
        else:
            yield self.client


def unavailable(exc: BaseException) -> IndexUnavailableError:
    return IndexUnavailableError(f"redis: {type(exc).__name__}: {exc}")


def open_nodes(settings: RedisSettings) -> Nodes:
    """Connect to ``settings.url`` (a cluster seed or a single node); raises ``ConfigError`` for
    settings that cannot work and ``IndexUnavailableError`` when Redis cannot be reached."""
    if not settings.url:
        raise ConfigError("--index-backend redis needs --redis-url")
    options: dict[str, Any] = {
        "socket_timeout": settings.timeout_s,
        "socket_connect_timeout": settings.timeout_s,
    }
    if settings.password_file is not None:
        try:
            options["password"] = Path(settings.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--redis-password-file: {exc}") from exc
    if settings.tls_ca_file is not None:
        if not settings.url.startswith("rediss://"):
            raise ConfigError("--redis-tls-ca-file needs a rediss:// URL")
        options["ssl_ca_certs"] = str(settings.tls_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    try:
        try:
            client: Client = RedisCluster.from_url(settings.url, **options)
        except RedisClusterException as exc:
            if not any(text in str(exc).lower() for text in _NOT_A_CLUSTER):
                raise
            client = redis.Redis.from_url(settings.url, **options)
            client.ping()
        nodes = Nodes(client)
        nodes.load_library()
    except _ERRORS as exc:
        raise unavailable(exc) from exc
    except ValueError as exc:  # redis-py's URL parser
        raise ConfigError(f"--redis-url {settings.url!r}: {exc}") from exc
    return nodes
