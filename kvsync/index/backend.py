"""The index seam: everything the daemon asks of a prefix index, whichever backend holds it.

``IndexBackend`` is the whole surface in use: the ingest thread applies batches, drops endpoints
and expires idle contexts; the HTTP side matches; the runtime reads stats. Every value crossing
it is backend-neutral (``kvsync.index.values``), and time comes in as an explicit ``now``:
seconds on the wall clock (``time.time()``), which every process and host reads alike, so a
backend shared by several daemons can compare the stamps its callers give it. Each call is
thread-safe inside the backend (its locking is its own business) and costs one call per batch or
per lookup: nothing here is per event.

Backends are picked by name (``--index-backend``) from ``BACKENDS``, uvicorn-style: the entry
names ``module:factory`` and is imported only when picked, so a backend with dependencies of its
own (a Redis Cluster one, say) is one package under ``kvsync/index/`` plus one entry here, and
costs nothing to a daemon that does not use it. ``open_backend`` raises ``ConfigError`` for an
unknown name. ``match`` raises ``IndexUnavailableError`` when the backend cannot answer now; writes
never raise for that (a shared backend keeps them until it can). Pure: no I/O here (a backend's
factory may do its own).
"""

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from kvsync.errors import ConfigError
from kvsync.index.values import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LIMITS,
    DEFAULT_MEDIUM_WEIGHTS,
    ApplyOutcome,
    EndpointContext,
    IndexStats,
    Limits,
    MatchResult,
    Query,
)
from kvsync.model import EndpointId, Event

LockHook = Callable[[str, float, float], None]  # (side: "ingest" | "http", wait_s, hold_s)

DEFAULT_BACKEND: Final = "memory"
BACKENDS: Final[Mapping[str, str]] = {
    "memory": "kvsync.index.memory.backend:open_memory",
    "redis": "kvsync.index.redis.backend:open_redis",
}


class IndexBackend(Protocol):
    """A prefix index the daemon's threads share; see the module docstring."""

    def apply(
        self,
        endpoint: EndpointId,
        context: EndpointContext,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> ApplyOutcome:
        """Apply one batch's events of ``endpoint`` in order (``blocks_held`` filled in);
        ``seq`` is the batch's, which a shared backend stores with it (``resume`` reads it)."""
        ...

    def resume(self, endpoint: EndpointId, ident: str) -> int | None:
        """Take ``endpoint`` for this writer (``ident``: its incarnation, as discovery tells
        them apart); the seq of the last batch stored for that same incarnation, whose blocks
        the backend still holds, or None (nothing kept: the caller starts from seq 0)."""
        ...

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        """Forget everything ``endpoint`` holds; returns the blocks dropped."""
        ...

    def expire(self, now: float) -> Mapping[str, int]:
        """Drop contexts idle for the limits' ``idle_ttl_seconds``; blocks dropped by reason."""
        ...

    def match(self, query: Query, now: float) -> MatchResult:
        """Per endpoint, the leading blocks of ``query`` it holds (the design's §5)."""
        ...

    def blocks_held(self, endpoint: EndpointId) -> int:
        """Blocks ``endpoint`` holds, in any copy and context."""
        ...

    def stats(self) -> IndexStats:
        """Sizes and eviction totals."""
        ...

    def health(self) -> str | None:
        """None while the backend takes writes and answers; else why not (``/readyz``)."""
        ...

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every write made so far is what lookups see; True if it is."""
        ...

    def close(self, timeout_s: float = 5.0) -> bool:
        """Write out what is pending and release connections; True if nothing was left."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RedisSettings:
    """Where the ``redis`` backend finds its cluster (``--redis-*``)."""

    url: str | None = None  # redis://host:port (a cluster seed or one node); rediss:// is TLS
    password_file: str | None = None  # the password, read at open (a mounted Secret)
    tls_ca_file: str | None = None  # CA bundle to verify the server's certificate
    timeout_s: float = 2.0  # connect and per-command socket timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendSettings:
    """What every backend is opened with (the runtime fills it from ``Settings``)."""

    limits: Limits = DEFAULT_LIMITS
    medium_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_MEDIUM_WEIGHTS)
    default_block_size: int = DEFAULT_BLOCK_SIZE
    on_lock: LockHook | None = None  # a backend with a lock reports its wait and hold times
    redis: RedisSettings = RedisSettings()


def open_backend(name: str, settings: BackendSettings) -> IndexBackend:
    """The backend ``name`` (a key of ``BACKENDS``), opened with ``settings``."""
    target = BACKENDS.get(name)
    if target is None:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigError(f"--index-backend {name!r}: not one of {known}")
    module_name, _, factory_name = target.partition(":")
    factory: Callable[[BackendSettings], IndexBackend] = getattr(
        importlib.import_module(module_name), factory_name
    )
    return factory(settings)
