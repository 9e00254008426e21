"""Every Prometheus metric of kvsync, in one place. I/O edge (prometheus_client).

Two kinds:

* Metrics pushed where the thing happens, all of them cheap and off the per-event path: HTTP
  match requests and latency, index-lock wait and hold times (per lookup, per ingest batch),
  event lag (per batch), informer re-lists and errors. These are module-level objects created
  without a registry; ``registry()`` adds them to the registry that ``/metrics`` serves.
* Values that already exist as plain numbers elsewhere — the subscriber manager's counters,
  endpoint states, index size and evictions — are read at scrape time by ``SnapshotCollector``
  from a ``Snapshot`` the runtime assembles. The ingest loop never touches prometheus_client for
  them.

Names take the ``kvsync_`` prefix and base units; counters end in ``_total``; labels are
low-cardinality (``type``, ``reason``, ``result``, ``state``, ``side``), never pods or hashes.
Any thread may observe the pushed metrics (prometheus_client is thread-safe). Raises nothing.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvsync.model import EndpointState


class AuditVerdict(Protocol):
    """``kvsync.audit.ledger.Verdict`` as the metrics read it."""

    @property
    def outcome(self) -> str: ...
    @property
    def error_tokens(self) -> int | None: ...


# Sub-millisecond buckets: a lookup or a lock wait is normally tens of microseconds.
_FAST_BUCKETS: Final = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_LAG_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

MATCH_REQUESTS: Final = Counter(
    "kvsync_match_requests",
    "POST /v1/match requests by result (ok, or the rejection: bad_json, bad_shape, ...)",
    ["result"],
    registry=None,
)
MATCH_DURATION: Final = Histogram(
    "kvsync_match_duration_seconds",
    "Time to answer one valid POST /v1/match, from decoded body to encoded answer",
    buckets=_FAST_BUCKETS,
    registry=None,
)
LOCK_WAIT: Final = Histogram(
    "kvsync_index_lock_wait_seconds",
    "Time spent waiting for the index lock, by side (http lookup, ingest batch)",
    ["side"],
    buckets=_FAST_BUCKETS,
    registry=None,
)
LOCK_HOLD: Final = Histogram(
    "kvsync_index_lock_hold_seconds",
    "Time the index lock was held, by side (http lookup, ingest batch)",
    ["side"],
    buckets=_FAST_BUCKETS,
    registry=None,
)
EVENT_LAG: Final = Histogram(
    "kvsync_event_lag_seconds",
    "Wall-clock delay from a batch's publisher timestamp to its application to the index",
    buckets=_LAG_BUCKETS,
    registry=None,
)
INFORMER_RELISTS: Final = Counter(
    "kvsync_informer_relists",
    "Full pod re-lists by the Kubernetes informer (start, 410 Gone, after errors)",
    registry=None,
)
INFORMER_ERRORS: Final = Counter(
    "kvsync_informer_errors",
    "Kubernetes API errors seen by the informer, by reason",
    ["reason"],
    registry=None,
)

# An engine's /tokenize round trip: loopback sub-millisecond, a loaded pod tens of milliseconds.
_TOKENIZE_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
TOKENIZE_DURATION: Final = Histogram(
    "kvsync_tokenize_duration_seconds",
    "One POST /tokenize round trip to a pod's engine (a prompt not in the tokenize cache)",
    buckets=_TOKENIZE_BUCKETS,
    registry=None,
)
TOKENIZE_REQUESTS: Final = Counter(
    "kvsync_tokenize_requests",
    "POST /tokenize calls to engines by result (ok, timeout, unreachable, not_served, "
    "engine_error, rejected)",
    ["result"],
    registry=None,
)
TOKENIZE_CACHE: Final = Counter(
    "kvsync_tokenize_cache",
    "Prompt lookups by tokenize-cache result (hit, miss)",
    ["result"],
    registry=None,
)
API_REQUESTS: Final = Counter(
    "kvsync_api_requests",
    "Requests to the routes other than /v1/match (hint, feedback, explain, the Dynamo/Mooncake "
    "API), by route and result (ok, or the rejection)",
    ["route", "result"],
    registry=None,
)
HINTS: Final = Counter(
    "kvsync_hints",
    "Speculative hint blocks by what became of them (added, confirmed, expired, reset, evicted)",
    ["result"],
    registry=None,
)

LOAD_SCRAPES: Final = Counter(
    "kvsync_load_scrapes",
    "Scrapes of engines' /metrics, by result (ok, or the failure: timeout, unreachable, ...)",
    ["result"],
    registry=None,
)
LOAD_SCRAPE_DURATION: Final = Histogram(
    "kvsync_load_scrape_duration_seconds",
    "Time of one engine /metrics scrape, connect to parsed figures (failures included)",
    buckets=_LAG_BUCKETS,
    registry=None,
)
AUDIT_PREDICTIONS: Final = Counter(
    "kvsync_audit_predictions",
    "Routed requests whose engine reported its cached tokens, by model and outcome "
    "(exact, over, under: kvsync's prediction against the engine's; unknown: no answer kept)",
    ["model", "outcome"],
    registry=None,
)
AUDIT_ERROR_TOKENS: Final = Histogram(
    "kvsync_audit_error_tokens",
    "Predicted minus engine-reported cached tokens of routed requests, by model",
    ["model"],
    buckets=(-4096, -1024, -256, -64, -16, -1, 0, 16, 64, 256, 1024, 4096),
    registry=None,
)

# Model names come from requests: past this many, the rest are counted as "other".
MAX_AUDIT_MODELS: Final = 100
_audit_models: set[str] = set()


def observe_verdict(model: str, verdict: "AuditVerdict") -> None:
    """The audit's hook (``kvsync.audit.ledger.Audit(on_verdict=...)``): one routed request."""
    if model not in _audit_models:
        if len(_audit_models) >= MAX_AUDIT_MODELS:
            model = "other"
        else:
            _audit_models.add(model)
    AUDIT_PREDICTIONS.labels(model=model, outcome=verdict.outcome).inc()
    if verdict.error_tokens is not None:
        AUDIT_ERROR_TOKENS.labels(model=model).observe(verdict.error_tokens)


_WAIT_BY_SIDE: Final = {side: LOCK_WAIT.labels(side=side) for side in ("ingest", "http")}
_HOLD_BY_SIDE: Final = {side: LOCK_HOLD.labels(side=side) for side in ("ingest", "http")}


def observe_lock(side: str, wait_s: float, hold_s: float) -> None:
    """The index backend's lock hook (``kvsync.index.backend.LockHook``): one wait, one hold."""
    _WAIT_BY_SIDE[side].observe(wait_s)
    _HOLD_BY_SIDE[side].observe(hold_s)


PUSHED: Final = (
    MATCH_REQUESTS,
    MATCH_DURATION,
    LOCK_WAIT,
    LOCK_HOLD,
    EVENT_LAG,
    INFORMER_RELISTS,
    INFORMER_ERRORS,
    TOKENIZE_DURATION,
    TOKENIZE_REQUESTS,
    TOKENIZE_CACHE,
    API_REQUESTS,
    HINTS,
    LOAD_SCRAPES,
    LOAD_SCRAPE_DURATION,
    AUDIT_PREDICTIONS,
    AUDIT_ERROR_TOKENS,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Plain values read at scrape time; counters are totals since start."""

    batches: int = 0
    events: Mapping[str, int] = field(default_factory=dict)  # by type: stored, removed, cleared
    blocks: Mapping[str, int] = field(default_factory=dict)  # by type: stored, removed
    decode_errors: Mapping[str, int] = field(default_factory=dict)  # by errors.Reason
    rejected_events: Mapping[str, int] = field(default_factory=dict)  # by errors.Reason
    sequence_gaps: int = 0
    replays: Mapping[str, int] = field(default_factory=dict)  # by result
    resets: Mapping[str, int] = field(default_factory=dict)  # by reason
    duplicates: int = 0  # live batches a replay had already applied
    endpoints: Mapping[str, int] = field(default_factory=dict)  # by state
    index_blocks: int = 0
    index_contexts: int = 0
    index_keys: int = 0
    evictions: Mapping[str, int] = field(default_factory=dict)  # by reason
    shard_index: int = 0
    shard_count: int = 1
    endpoints_skipped: int = 0  # discovered endpoints another shard subscribes to


ENDPOINT_STATES: Final = tuple(state.value for state in EndpointState)  # each one always shown


def _counter(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class SnapshotCollector(Collector):
    """Turns a ``Snapshot`` (taken when Prometheus scrapes) into metric families."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        snap = self._snapshot()
        yield CounterMetricFamily(
            "kvsync_batches_applied", "Event batches applied to the index", value=snap.batches
        )
        yield _counter(
            "kvsync_events_applied", "Events applied to the index, by type", "type", snap.events
        )
        yield _counter(
            "kvsync_blocks_applied", "Blocks stored or removed, by event type", "type", snap.blocks
        )
        yield _counter(
            "kvsync_decode_errors",
            "ZMQ messages rejected whole by the decoder, by reason",
            "reason",
            snap.decode_errors,
        )
        yield _counter(
            "kvsync_events_rejected",
            "Single events rejected inside an otherwise valid batch, by reason",
            "reason",
            snap.rejected_events,
        )
        yield CounterMetricFamily(
            "kvsync_sequence_gaps", "Sequence gaps seen on live streams", value=snap.sequence_gaps
        )
        yield _counter("kvsync_replays", "Replay requests, by result", "result", snap.replays)
        yield _counter(
            "kvsync_endpoint_resets",
            "Times an endpoint's index state was dropped, by reason",
            "reason",
            snap.resets,
        )
        yield CounterMetricFamily(
            "kvsync_duplicates_skipped",
            "Live copies of batches a replay had already applied, skipped",
            value=snap.duplicates,
        )
        states = GaugeMetricFamily(
            "kvsync_endpoints", "Subscribed endpoints, by state", labels=["state"]
        )
        for state in sorted({*ENDPOINT_STATES, *snap.endpoints}):
            states.add_metric([state], snap.endpoints.get(state, 0))
        yield states
        yield GaugeMetricFamily(
            "kvsync_index_blocks", "Blocks held, counted once per endpoint", value=snap.index_blocks
        )
        yield GaugeMetricFamily(
            "kvsync_index_contexts", "(model, LoRA, block size) contexts", value=snap.index_contexts
        )
        yield GaugeMetricFamily(
            "kvsync_index_keys", "Distinct block keys in the index", value=snap.index_keys
        )
        yield _counter(
            "kvsync_index_evictions", "Blocks evicted by the index, by reason", "reason",
            snap.evictions,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "kvsync_shard_index", "This replica's shard (--shard-index)", value=snap.shard_index
        )
        yield GaugeMetricFamily(
            "kvsync_shard_count", "Shards sharing the endpoints (--shard-count)",
            value=snap.shard_count,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "kvsync_endpoints_skipped",
            "Discovered endpoints another shard subscribes to (not subscribed here)",
            value=snap.endpoints_skipped,
        )


def registry(snapshot: Callable[[], Snapshot] | None = None) -> CollectorRegistry:
    """A registry with every kvsync metric (and the scrape-time ones when ``snapshot`` is given).

    A fresh registry per daemon instance, so tests can run several apps in one process; the
    pushed metrics are shared process-wide objects and appear in each.
    """
    result = CollectorRegistry(auto_describe=True)
    for metric in PUSHED:
        result.register(metric)
    if snapshot is not None:
        result.register(SnapshotCollector(snapshot))
    return result
