"""The ingest pipeline's plain values: handler outcomes, settings, counters. Pure.

``kvsync.ingest.sequencer`` returns ``Outcome`` values and takes ``Instant`` / ``ReplaySettings``;
``Totals`` is mutated by the ingest thread (``kvsync.ingest.manager``) under its stats lock;
``IngestStats`` / ``EndpointStats`` are the frozen copies other threads read. No prometheus_client
here: the metrics layer turns a snapshot into metric families at scrape time. Raises nothing.
"""

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from kvsync.errors import Reason
from kvsync.model import Endpoint, EndpointState

State = EndpointState  # its home is kvsync.model: /v1/pods and the metrics show it too


class ResetReason(enum.StrEnum):
    """Why an endpoint's state was dropped: the metric label and the log field."""

    RESTART = "restart"  # seq went backwards: a new engine process
    HOLE = "hole"  # the replay buffer no longer covers the gap
    GAP = "gap"  # a gap with no replay to fill it (no replay address, or cooling down)
    REPLAY_FAILED = "replay_failed"  # the replay missed its deadline and the gap remained
    # an event that may have removed blocks (BlockRemoved, AllBlocksCleared, or of unreadable
    # type) was rejected: holders may be stale
    LOST_REMOVAL = "lost_removal"
    UNDECODABLE = "undecodable"  # a whole live message could not be decoded (it may have removed)


class ReplayResult(enum.StrEnum):
    OK = "ok"  # the end marker arrived and the replay filled the gap
    HOLE = "hole"  # the end marker arrived but the buffer no longer covered the gap
    FAILED = "failed"  # no end marker before the deadline


class Instant(NamedTuple):
    """A point in time: ``mono`` (time.monotonic) for deadlines, ``wall`` (time.time) for lag,
    since batch timestamps are the publisher's wall clock, and for the index (a clock every
    process reads alike: ``kvsync.index.backend``)."""

    mono: float
    wall: float


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """Send ``[b"", start (8-byte BE)]`` on a fresh DEALER; tag its replies with ``ticket``."""

    start: int
    ticket: int


@dataclass(slots=True)
class Outcome:
    """What one input caused. Defaults mean "nothing"; tuples stay empty on the hot path."""

    replay: ReplayRequest | None = None  # a new request, superseding any in flight
    replay_abandoned: bool = False  # the in-flight replay is over without an end marker
    gaps: int = 0
    resets: tuple[ResetReason, ...] = ()
    replays: tuple[ReplayResult, ...] = ()
    batches: int = 0
    stored_events: int = 0
    removed_events: int = 0
    cleared_events: int = 0
    stored_blocks: int = 0
    removed_blocks: int = 0
    dropped_blocks: int = 0  # blocks forgotten by resets
    rejected: tuple[Reason, ...] = ()  # events of applied batches the decoder rejected
    duplicates: int = 0  # live or held batches skipped because the replay already applied them
    held_dropped: int = 0  # held batches discarded because the hold buffer was full
    stale_replies: int = 0  # replay replies of a superseded or finished request
    lags: list[float] = field(default_factory=list)  # wall now - batch ts, per live batch applied


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """The handler's knobs (``kvsync.ingest.sequencer``)."""

    replay_timeout_s: float = 5.0  # idle: since the request or the last reply
    # The overall cap grows by this per batch delivered: a replay streaming at least 20 batches
    # a second may go on, a trickle slower than that fails (vLLM's buffer: 10,000 batches).
    replay_cap_per_batch_s: float = 0.05
    replay_cooldown_s: float = 30.0
    max_held: int = 4096


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Options of every socket to a publisher (``kvsync.ingest.sockets.configure`` applies them)."""

    rcvhwm: int = 100_000  # vLLM's publisher hwm: a burst the size of its queue fits
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5_000
    heartbeat_ivl_ms: int = 5_000  # a peer gone without a FIN is noticed within ~15 s
    heartbeat_timeout_ms: int = 15_000


@dataclass(frozen=True, slots=True)
class IngestSettings:
    handler: ReplaySettings = field(default_factory=ReplaySettings)  # replay deadline, ...
    sockets: SocketOptions = field(default_factory=SocketOptions)
    drain_max: int = 256  # messages per socket per poll round: fairness between publishers
    poll_ms: int = 100  # bounds the latency of commands and of stop()
    log_interval_s: float = 60.0  # per endpoint and event, after the first occurrence
    max_sockets: int = 8192  # zmq context limit: one SUB per endpoint, a DEALER per replay
    sweep_interval_s: float = 60.0  # how often idle index contexts are expired


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
    duplicates: int = 0  # live copies of replayed batches, skipped
    reset_reasons: Mapping[str, int] = field(default_factory=dict)  # by ResetReason value
    reset_log: tuple[tuple[float, str], ...] = ()  # the latest resets: (wall-clock s, reason)


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
