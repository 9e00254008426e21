"""The daemon's wiring and lifecycle. I/O edge; the main thread owns it.

``Daemon(settings)`` builds the graph: the index backend (``--index-backend``, opened by name:
``kvsync.index.backend``), the ingest thread (``SubscriberManager``), the discovery ``Source``
(``--discovery``: ``SOURCES``, through the ``ShardSink`` that keeps this replica's share of the
endpoints: ``--shard-count`` / ``--shard-index``) and the HTTP server. ``start()`` starts them
(ingest first, so discovery's commands find it running), then the load scraper (``kvsync.load``:
every engine's ``/metrics``, its own thread; discovery feeds it and the audit beside ingest
through ``Tee``); ``stop(budget)`` stops discovery, HTTP, load, then ingest, each joined within
the budget.

``run(settings)`` is ``kvsync serve``: it installs the signal handlers and waits. On the first
SIGTERM or SIGINT ``/readyz`` turns 503, the daemon keeps answering for ``drain_seconds`` (so
Service endpoints update), then stops in order and returns 0. A second signal exits at once with
128 + signum. SIGHUP re-reads the endpoints file. A component thread that crashes is logged once
(by its own guard) and the process exits 1. If a component does not stop within its budget the
process exits 1 without waiting for it.

Raises ``ConfigError`` at construction (unreadable token or endpoints file, address in use); the
CLI exits 2.
"""

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Final

import structlog

from kvsync import metrics
from kvsync.audit.ledger import Audit
from kvsync.audit.memo import AnswerMemo
from kvsync.daemon.config import Settings
from kvsync.daemon.load_views import TableViews, audit_view, load_view
from kvsync.discovery.base import Sink, Source, Tee
from kvsync.discovery.endpoints import split_tcp_address
from kvsync.discovery.kubernetes.source import Informer, InformerOptions, api_client
from kvsync.discovery.shards import Shard, ShardSink
from kvsync.discovery.static import StaticDiscovery
from kvsync.errors import ConfigError
from kvsync.http import schemas, server
from kvsync.http.app import Api, ApiSettings, create_app
from kvsync.http.dynamo import DynamoApi
from kvsync.http.hints import HintIndex
from kvsync.http.tokenize import Engine, Tokenizer, TokenizeSettings
from kvsync.http.views import EndpointView
from kvsync.index.backend import BackendSettings, IndexBackend, RedisSettings, open_backend
from kvsync.index.values import Limits
from kvsync.ingest.manager import SubscriberManager
from kvsync.ingest.values import IngestSettings, IngestStats, ReplaySettings
from kvsync.load.scraper import LoadScraper, LoadSettings
from kvsync.load.table import LoadTable
from kvsync.model import Endpoint, EndpointId

log = structlog.get_logger()

LIVENESS_SECONDS: Final = 10.0  # the ingest loop ticks every 100 ms; 10 s without one is stuck
WATCH_INTERVAL_SECONDS: Final = 0.2  # how often the main thread checks for crashed components
# The ingest thread is CPU-bound under load; a thread that wants the GIL back (the HTTP loop,
# after every socket wait) gets it only when the holder's switch interval ends. Python's 5 ms
# default would put up to 5 ms on each step of a lookup; 1 ms costs the ingest thread little.
GIL_SWITCH_INTERVAL_S: Final = 0.001
EXIT_OK: Final = 0
EXIT_CRASHED: Final = 1


def _static_source(settings: Settings, sink: Sink) -> Source:
    source = StaticDiscovery(
        sink, settings.endpoint, settings.endpoints_file, engine_port=settings.engine_port
    )
    source.load_initial()  # a bad endpoints file fails start-up (ConfigError: exit 2)
    return source


def _kubernetes_source(settings: Settings, sink: Sink) -> Source:
    options = InformerOptions(
        namespaces=settings.namespace, selector=settings.selector, defaults=settings.pod_defaults()
    )
    return Informer(api_client(), sink, options)


# ``--discovery``: the sources by name (each builds its own from the settings).
SOURCES: Final[dict[str, Callable[[Settings, Sink], Source]]] = {
    "static": _static_source,
    "kubernetes": _kubernetes_source,
}


def pod_rows(
    stats: IngestStats,
    now: float,
    *,
    load: Callable[[EndpointId], schemas.EndpointLoad | None] = lambda _endpoint: None,
    audit: Callable[[EndpointId], schemas.EndpointAudit | None] = lambda _endpoint: None,
) -> list[schemas.PodStatus]:
    """``GET /v1/pods`` rows from an ingest snapshot (and the load and audit of each endpoint),
    sorted by pod and rank."""
    rows = []
    for found in stats.endpoints:
        endpoint = found.endpoint
        age = None if found.last_event_at is None else max(0.0, now - found.last_event_at)
        rows.append(
            schemas.PodStatus(
                pod=endpoint.id.pod,
                dp_rank=endpoint.id.dp_rank,
                model=endpoint.model,
                pub=endpoint.pub,
                replay=endpoint.replay,
                state=found.state,
                last_seq=found.last_seq,
                last_event_age_s=None if age is None else round(age, 3),
                blocks=found.blocks,
                gaps=found.gaps,
                replays=found.replays,
                resets=found.resets,
                decode_errors=found.decode_errors,
                duplicates=found.duplicates,
                reset_reasons=dict(found.reset_reasons),
                engine=endpoint.engine,
                load=load(endpoint.id),
                audit=audit(endpoint.id),
            )
        )
    rows.sort(key=lambda row: (row.pod, row.dp_rank))
    return rows


def endpoint_views(stats: IngestStats, now: float) -> list[EndpointView]:
    """What the HTTP side sees of the endpoints (``kvsync.http.views``), from a snapshot."""
    views = []
    for found in stats.endpoints:
        endpoint = found.endpoint
        age = None if found.last_event_at is None else max(0.0, now - found.last_event_at)
        views.append(
            EndpointView(
                id=endpoint.id,
                model=endpoint.model,
                pub=endpoint.pub,
                replay=endpoint.replay,
                engine=endpoint.engine,
                state=found.state,
                last_seq=found.last_seq,
                last_event_age_s=None if age is None else round(age, 3),
                resets=found.reset_log,
            )
        )
    views.sort(key=lambda view: view.id)
    return views


class EngineDirectory:
    """A ``Sink`` in front of the shard filter that remembers every discovered endpoint's engine
    address, so a shard (or a replica) tokenizes prompts with any pod of the model, not only the
    pods it subscribes to. Written by discovery's thread, read by the HTTP loop's."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._endpoints: dict[EndpointId, Endpoint] = {}

    def set_endpoint(self, endpoint: Endpoint) -> None:
        with self._lock:
            self._endpoints[endpoint.id] = endpoint
        self._sink.set_endpoint(endpoint)

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        with self._lock:
            self._endpoints.pop(endpoint_id, None)
        self._sink.remove_endpoint(endpoint_id)

    def __contains__(self, endpoint_id: object) -> bool:
        with self._lock:
            return endpoint_id in self._endpoints

    def engines(self, views: list[EndpointView]) -> list[Engine]:
        """One engine per pod that has an address (its ranks share it): pods this replica
        subscribes to and that are live first, then the other discovered ones."""
        with self._lock:
            known = list(self._endpoints.values())
        live = {v.id for v in views if v.state in ("live", "reset")}
        seen: dict[str, Engine] = {}
        for endpoint in sorted(known, key=lambda e: (e.id not in live, e.id)):
            if endpoint.engine is not None and endpoint.id.pod not in seen:
                engine = Engine(pod=endpoint.id.pod, model=endpoint.model, url=endpoint.engine)
                seen[endpoint.id.pod] = engine
        return list(seen.values())


def checked_registration(endpoint: Endpoint) -> Endpoint:
    """An endpoint from ``POST /register`` whose addresses libzmq can use; ``ValueError``."""
    split_tcp_address("endpoint", endpoint.pub)
    if endpoint.replay is not None:
        split_tcp_address("replay_endpoint", endpoint.replay)
    return endpoint


def read_token(settings: Settings) -> str | None:
    """The bearer token from ``--api-token`` or the file ``--api-token-file`` names."""
    if settings.api_token_file is None:
        return settings.api_token
    try:
        with open(settings.api_token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--api-token-file {settings.api_token_file}: {exc}") from None
    if not token:
        raise ConfigError(f"--api-token-file {settings.api_token_file}: the file is empty")
    return token


class Daemon:
    """Index, ingest, discovery and HTTP, wired; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.http_crashed = threading.Event()
        self.index: IndexBackend = open_backend(
            settings.index_backend,
            BackendSettings(
                limits=Limits(
                    max_contexts=settings.max_contexts,
                    max_keys_per_context=settings.max_prefixes_per_context,
                    idle_ttl_seconds=settings.idle_ttl_seconds,
                ),
                medium_weights=settings.medium_weights,
                default_block_size=settings.default_block_size,
                on_lock=metrics.observe_lock,
                redis=RedisSettings(
                    url=settings.redis_url,
                    password_file=settings.redis_password_file,
                    tls_ca_file=settings.redis_tls_ca_file,
                ),
            ),
        )
        handler_settings = ReplaySettings(
            replay_timeout_s=settings.replay_timeout_seconds,
            replay_cooldown_s=settings.replay_cooldown_seconds,
        )
        self.hints = HintIndex()
        self.ingest = SubscriberManager(
            self.index,
            settings=IngestSettings(
                handler=handler_settings, sweep_interval_s=settings.eviction_interval_seconds
            ),
            on_lag=metrics.EVENT_LAG.observe,
            on_reset=self.hints.forget,  # a reset or removed endpoint's hints are void
        )
        self.load_table = LoadTable(lambda endpoint: endpoint.engine)
        self.load = LoadScraper(
            self.load_table,
            LoadSettings(
                interval_s=settings.load_interval_seconds,
                timeout_s=settings.load_timeout_seconds,
                concurrency=settings.load_concurrency,
            ),
        )
        self.audit = Audit(
            AnswerMemo(
                window_s=settings.audit_window_seconds, max_answers=settings.audit_max_answers
            ),
            counters=self.load_table.counters,
            on_verdict=metrics.observe_verdict,
            known_only=True,
        )
        # Discovery sees every endpoint; ingest gets only this shard's (all of them unsharded).
        # The load table and the audit get them all: every replica answers for every endpoint.
        self.shard = ShardSink(self.ingest, Shard(settings.shard_index, settings.shard_count))
        # ... and the engine directory every endpoint's engine: any shard tokenizes with any pod
        self.engines = EngineDirectory(self.shard)
        self.discovery: Source = SOURCES[settings.discovery](
            settings, Tee(self.engines, self.load_table, self.audit)
        )
        self.sink = Tee(self.ingest, self.load_table, self.audit)  # Dynamo's registrations
        self.tokenizer = Tokenizer(
            lambda: self.engines.engines(self.endpoint_views()),
            TokenizeSettings(
                timeout_s=settings.tokenize_timeout_seconds,
                cache_entries=settings.tokenize_cache_entries,
            ),
        )
        dynamo = DynamoApi(
            reader=self.index,
            endpoints=self.endpoint_views,
            register=lambda e: self.sink.set_endpoint(checked_registration(e)),
            unregister=self.sink.remove_endpoint,
            max_query_tokens=settings.max_query_tokens,
        )
        app = create_app(
            Api(
                reader=self.index,
                pods=self._pod_rows,
                load=TableViews(self.load_table),
                audit=self.audit,
                event_age=self._event_age,
                health=self,
                registry=metrics.registry(self.metrics_snapshot),
                shard=self.shard_status,
                discovered=self.engines.__contains__,
                settings=ApiSettings(
                    max_body_bytes=settings.max_body_bytes,
                    max_query_tokens=settings.max_query_tokens,
                    api_token=read_token(settings),
                    hint_ttl_s=settings.hint_ttl_seconds,
                ),
                endpoints=self.endpoint_views,
                tokenizer=self.tokenizer,
                hints=self.hints,
                dynamo=dynamo,
                removal_seq=self.ingest.removal_seq,
            )
        )
        self.http = server.HttpServer(
            app,
            settings.http_host,
            settings.http_port,
            graceful_seconds=settings.stop_timeout_seconds,
            on_crash=lambda _exc: self.http_crashed.set(),
        )

    def endpoint_views(self) -> list[EndpointView]:
        return endpoint_views(self.ingest.snapshot(), time.monotonic())

    def shard_status(self) -> schemas.ShardStatus:
        shard = self.shard.shard
        return schemas.ShardStatus(
            index=shard.index, count=shard.count, skipped_endpoints=self.shard.skipped
        )

    def _pod_rows(self) -> list[schemas.PodStatus]:
        now = time.monotonic()
        return pod_rows(
            self.ingest.snapshot(),
            now,
            load=lambda endpoint: load_view(self.load_table.get(endpoint), now),
            audit=lambda endpoint: audit_view(self.audit.endpoint(endpoint)),
        )

    def _event_age(self, endpoint: EndpointId) -> float | None:
        age = self.ingest.last_event_age(endpoint)
        return None if age is None else round(age, 3)

    # -- Health ----------------------------------------------------------------------

    def live(self) -> bool:
        ticked = time.monotonic() - self.ingest.ticked_at
        return ticked < LIVENESS_SECONDS and not self.ingest.failed.is_set()

    def ready(self) -> bool:
        return (
            self.discovery.synced.is_set()
            and not self.stopping.is_set()
            and self.index.health() is None
        )

    def not_ready_reason(self) -> str:
        if self.stopping.is_set():
            return "stopping"
        problem = self.index.health()
        if problem is not None:
            return f"index backend: {problem}"
        return "initial discovery not synced"

    # -- metrics ------------------------------------------------------------------------

    def metrics_snapshot(self) -> metrics.Snapshot:
        ingest = self.ingest.snapshot()
        stats = self.index.stats()
        return metrics.Snapshot(
            batches=ingest.batches,
            events=ingest.events,
            blocks=ingest.blocks,
            decode_errors=ingest.decode_errors,
            rejected_events=ingest.rejected_events,
            sequence_gaps=ingest.gaps,
            replays=ingest.replays,
            resets=ingest.resets,
            duplicates=ingest.duplicates,
            endpoints=ingest.endpoints_by_state(),
            index_blocks=stats.entries,
            index_contexts=stats.contexts,
            index_keys=stats.keys,
            evictions=stats.evictions,
            shard_index=self.settings.shard_index,
            shard_count=self.settings.shard_count,
            endpoints_skipped=self.shard.skipped,
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.http.url

    def start(self, timeout_s: float = 10.0) -> None:
        """Start every component; ``ConfigError`` if the HTTP server cannot come up."""
        self.ingest.start()
        self.load.start()
        self.discovery.start()
        self.http.start()
        if not self.http.wait_started(timeout_s):
            raise ConfigError(f"HTTP server did not start on {self.http.url}")
        log.info("daemon_started", url=self.http.url, discovery=self.settings.discovery)

    def _stop_tokenizer(self, _budget_s: float) -> bool:
        self.tokenizer.close()
        return True

    def crashed(self) -> str | None:
        """The component that died, if one did."""
        if self.ingest.failed.is_set():
            return "ingest"
        if self.http_crashed.is_set():
            return "http"
        if self.load.failed.is_set():
            return "load"
        return None

    def stop(self, budget_s: float) -> bool:
        """Stop discovery, HTTP, ingest, each within ``budget_s``; True if all stopped."""
        self.stopping.set()
        clean = True
        for name, stop in (
            ("discovery", self.discovery.stop),
            ("http", self.http.stop),
            ("load", self.load.stop),
            ("ingest", self.ingest.stop),
            ("tokenizer", self._stop_tokenizer),
            ("index", self.index.close),  # after ingest: its last writes go out
        ):
            started = time.monotonic()
            if not stop(budget_s):
                log.error("stop_timeout", component=name, budget_s=budget_s)
                clean = False
            else:
                log.info("stopped", component=name, took_s=round(time.monotonic() - started, 3))
        return clean


class Signals:
    """SIGTERM/SIGINT/SIGHUP on the main thread: first stop politely, second exit at once."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self.received = threading.Event()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.received.is_set():
            sys.stdout.flush()
            os._exit(128 + signum)  # a second signal: the operator wants out now
        self.received.set()
        self._daemon.stopping.set()  # /readyz answers 503 from here on

    def _on_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        self._daemon.discovery.request_reload()


def supervise(daemon: Daemon, stop_requested: threading.Event) -> tuple[int, bool]:
    """Wait for a stop request or a crash, drain, stop in order; (exit code, stopped cleanly)."""
    settings = daemon.settings
    crashed = None
    while not stop_requested.wait(WATCH_INTERVAL_SECONDS):
        crashed = daemon.crashed()
        if crashed is not None:
            break
    if crashed is None:
        log.info("draining", seconds=settings.drain_seconds)
        drain_until = time.monotonic() + settings.drain_seconds
        while (left := drain_until - time.monotonic()) > 0 and daemon.crashed() is None:
            time.sleep(min(left, WATCH_INTERVAL_SECONDS))  # still answering lookups
        crashed = daemon.crashed()
    if crashed is not None:
        log.error("component_crashed", component=crashed)
    clean = daemon.stop(settings.stop_timeout_seconds)
    code = EXIT_OK if crashed is None and clean else EXIT_CRASHED
    log.info("exiting", code=code)
    return code, clean


def run(settings: Settings) -> int:
    """``kvsync serve``: run until a signal or a crash; returns the exit code."""
    log.info("config_loaded", **settings.redacted())
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    daemon = Daemon(settings)
    signals = Signals(daemon)
    signals.install()
    try:
        daemon.start()
    except ConfigError:
        daemon.stop(settings.stop_timeout_seconds)
        raise
    code, clean = supervise(daemon, signals.received)
    if not clean:  # a thread that would not stop must not hold the interpreter's exit hostage
        sys.stdout.flush()
        os._exit(code)
    return code
