"""Ingest settings and counters as plain values, for metrics, ``GET /v1/pods`` and tests. Pure.

``Totals`` is mutated by the ingest thread (``kvsync.subscribers``) under its stats lock;
``IngestStats`` / ``EndpointStats`` are the frozen copies other threads read. No prometheus_client
here: the metrics layer turns a snapshot into metric families at scrape time. Raises nothing.
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from kvsync.errors import Reason
from kvsync.handler import Outcome
from kvsync.handler import Settings as HandlerSettings
from kvsync.model import Endpoint


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Options of every socket to a publisher (``kvsync.replay.configure`` applies them)."""

    rcvhwm: int = 100_000  # vLLM's publisher hwm: a burst the size of its queue fits
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5_000
    heartbeat_ivl_ms: int = 5_000  # a peer gone without a FIN is noticed within ~15 s
    heartbeat_timeout_ms: int = 15_000


@dataclass(frozen=True, slots=True)
class IngestSettings:
    handler: HandlerSettings = field(default_factory=HandlerSettings)  # replay deadline, ...
    sockets: SocketOptions = field(default_factory=SocketOptions)
    drain_max: int = 256  # messages per socket per poll round: fairness between publishers
    poll_ms: int = 100  # bounds the latency of commands and of stop()
    log_interval_s: float = 60.0  # per endpoint and event, after the first occurrence


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """One subscribed endpoint; ``last_event_at`` is time.monotonic() of its last applied batch."""

    endpoint: Endpoint
    state: str  # connecting, replaying, live, reset
    last_seq: int | None
    last_event_at: float | None
    blocks: int
    gaps: int
    replays: int  # replay requests sent
    resets: int
    decode_errors: int


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Totals since start (they survive removed endpoints) and the current endpoints."""

    batches: int
    events: Mapping[str, int]  # by type: stored, removed, cleared
    blocks: Mapping[str, int]  # by type: stored, removed
    decode_errors: Mapping[str, int]  # by errors.Reason: whole messages rejected
    rejected_events: Mapping[str, int]  # single events, by errors.Reason or the index's reason
    gaps: int
    replays: Mapping[str, int]  # by handler.ReplayResult
    resets: Mapping[str, int]  # by handler.ResetReason
    duplicates: int  # held live batches the replay had already applied
    held_dropped: int  # held live batches dropped because the hold buffer was full
    stale_replies: int
    invalid_endpoints: int  # endpoints whose address libzmq refused
    unknown_removed: int  # removals of blocks the endpoint did not hold (it joined late)
    endpoints: tuple[EndpointStats, ...]

    def endpoints_by_state(self) -> dict[str, int]:
        return dict(Counter(e.state for e in self.endpoints))


@dataclass(slots=True)
class Totals:
    """The running counters; callers hold the stats lock."""

    batches: int = 0
    stored_events: int = 0
    removed_events: int = 0
    cleared_events: int = 0
    stored_blocks: int = 0
    removed_blocks: int = 0
    gaps: int = 0
    duplicates: int = 0
    held_dropped: int = 0
    stale_replies: int = 0
    invalid_endpoints: int = 0
    unknown_removed: int = 0
    decode_errors: Counter[str] = field(default_factory=Counter)
    rejected_events: Counter[str] = field(default_factory=Counter)
    replays: Counter[str] = field(default_factory=Counter)
    resets: Counter[str] = field(default_factory=Counter)

    def count_decode_error(self, reason: Reason) -> None:
        self.decode_errors[reason.value] += 1

    def add(self, out: Outcome) -> None:
        self.batches += out.batches
        self.stored_events += out.stored_events
        self.removed_events += out.removed_events
        self.cleared_events += out.cleared_events
        self.stored_blocks += out.stored_blocks
        self.removed_blocks += out.removed_blocks
        if out.gaps or out.duplicates or out.held_dropped or out.stale_replies:
            self.gaps += out.gaps
            self.duplicates += out.duplicates
            self.held_dropped += out.held_dropped
            self.stale_replies += out.stale_replies
        for reason in out.rejected:
            self.rejected_events[reason.value] += 1
        for result in out.replays:
            self.replays[result.value] += 1
        for reset in out.resets:
            self.resets[reset.value] += 1

    def add_index_rejections(self, rejected: Mapping[str, int], unknown_removed: int) -> None:
        self.rejected_events.update(rejected)
        self.unknown_removed += unknown_removed

    def freeze(self, endpoints: tuple[EndpointStats, ...]) -> IngestStats:
        return IngestStats(
            batches=self.batches,
            events={
                "stored": self.stored_events,
                "removed": self.removed_events,
                "cleared": self.cleared_events,
            },
            blocks={"stored": self.stored_blocks, "removed": self.removed_blocks},
            decode_errors=dict(self.decode_errors),
            rejected_events=dict(self.rejected_events),
            gaps=self.gaps,
            replays=dict(self.replays),
            resets=dict(self.resets),
            duplicates=self.duplicates,
            held_dropped=self.held_dropped,
            stale_replies=self.stale_replies,
            invalid_endpoints=self.invalid_endpoints,
            unknown_removed=self.unknown_removed,
            endpoints=endpoints,
        )
