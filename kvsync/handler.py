"""Per-endpoint sequence state machine: apply, hold during replay, gap, restart, hole.

Pure: no sockets, clocks, threads or logging. Time comes in as an ``Instant``; index writes go
through the two methods of ``IndexWriter``; everything else comes back as an ``Outcome`` value (the
replay request to send, and what happened, for counters and logs). The subscriber manager owns one
``EndpointHandler`` per endpoint, on the ingest thread, and performs the I/O the outcome asks for.
Raises nothing of its own; whatever the writer raises propagates.

Rules (docs/architecture.md, "Sequence, replay, restart"):

* Warm start: an endpoint with a replay address asks for replay from 0 as soon as it is started.
* First live message (unless its seq is 0: a stream's first batch), or ``seq > last + 1``: ask for
  replay from ``last + 1`` (0 when nothing was applied) and hold the live batch. Without a replay
  address (or while cooling down after a failed replay) the gap cannot be filled: drop the
  endpoint's state and apply the live batch.
* While replaying, live batches are held (at most ``max_held``, the oldest dropped first: the
  replay most likely covers those). After the end marker they are applied in order, and every held
  batch with ``seq <= last`` is skipped: replay and live overlap. A gap that remains after the
  replay is a hole (the replay could not fill it): drop state and go on.
* First replayed ``seq`` greater than requested, or a gap inside the replay: the publisher's buffer
  no longer covers the hole: drop state, then apply the replayed batches (they are true).
* Live ``seq <= last`` outside a replay (or a held batch whose seq is not above the previous held
  one): the engine restarted, since a publisher never re-sends live messages. Drop state, replay
  from 0 (unless the batch is seq 0 itself).
* Replay deadline passed: the replay failed. Apply the held batches as if there were no replay
  address (a gap drops state) and do not ask for another replay until the cool-down has passed.

A new replay request supersedes the one in flight: its ``ticket`` changes and replies carrying an
older ticket are ignored, so a late reply can never be applied twice.

A BlockStored whose parent block is unknown asks for no replay: it comes with no sequence gap (the
engine published a chain whose parent was stored before we joined, or whose parent event is older
than the replay buffer), so a replay would return nothing we have not seen. The index counts such
chains and never roots them; they become reachable when their parent is stored again.

States: ``connecting`` (nothing applied, no replay in flight), ``replaying``, ``live``, ``reset``
(live, but the state was dropped after an unrecoverable loss: blocks cached before it are unknown
until the engine stores them again; a stream that then starts again at seq 0 makes it ``live``).
"""

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, Protocol, TypeVar

from kvsync.errors import Reason
from kvsync.model import Batch, BlockRemoved, BlockStored, EndpointId, Event, ReplayEnd

ContextT = TypeVar("ContextT")
ContextT_contra = TypeVar("ContextT_contra", contravariant=True)


class IndexWriter(Protocol[ContextT_contra]):
    """The two index writes the handler performs (``kvsync.index.PrefixIndex`` offers them)."""

    def apply(
        self, endpoint: EndpointId, context: ContextT_contra, events: Sequence[Event], now: float
    ) -> object:
        """Apply one batch's events in order."""
        ...

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        """Forget every block of the endpoint; returns how many were dropped."""
        ...


class State(enum.StrEnum):
    CONNECTING = "connecting"
    REPLAYING = "replaying"
    LIVE = "live"
    RESET = "reset"


class ResetReason(enum.StrEnum):
    """Why an endpoint's state was dropped: the metric label and the log field."""

    RESTART = "restart"  # seq went backwards: a new engine process
    HOLE = "hole"  # the replay buffer no longer covers the gap
    GAP = "gap"  # a gap with no replay to fill it (no replay address, or cooling down)
    REPLAY_FAILED = "replay_failed"  # the replay missed its deadline and the gap remained


class ReplayResult(enum.StrEnum):
    OK = "ok"  # the end marker arrived and the replay filled the gap
    HOLE = "hole"  # the end marker arrived but the buffer no longer covered the gap
    FAILED = "failed"  # no end marker before the deadline


class Instant(NamedTuple):
    """A point in time: ``mono`` (time.monotonic) for deadlines and the index, ``wall``
    (time.time) for lag, since batch timestamps are the publisher's wall clock."""

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
    duplicates: int = 0  # held batches skipped because the replay already applied them
    held_dropped: int = 0  # held batches discarded because the hold buffer was full
    stale_replies: int = 0  # replay replies of a superseded or finished request
    lags: list[float] = field(default_factory=list)  # wall now - batch ts, per live batch applied


@dataclass(slots=True)
class _Replay:
    start: int
    ticket: int
    deadline: float
    followup: bool  # asked for by the held batches of the previous replay
    first: bool = True
    hole: bool = False
    applied: int = 0
    held: deque[Batch] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class Settings:
    replay_timeout_s: float = 5.0
    replay_cooldown_s: float = 30.0
    max_held: int = 4096


class EndpointHandler(Generic[ContextT]):
    """The sequence state of one endpoint; see the module docstring for the rules."""

    def __init__(
        self,
        endpoint: EndpointId,
        context: ContextT,
        writer: IndexWriter[ContextT],
        *,
        has_replay: bool,
        settings: Settings = Settings(),  # frozen: one shared default is safe
    ) -> None:
        self.endpoint = endpoint
        self.context = context
        self.has_replay = has_replay
        self.settings = settings
        self.gaps = 0
        self.resets = 0
        self.replays = 0  # replay requests sent
        self._writer = writer
        self._last: int | None = None
        self._partial = False  # state was dropped and the history before it is unknown
        self._replay: _Replay | None = None
        self._ticket = 0
        self._cooldown_until = float("-inf")

    @property
    def state(self) -> State:
        if self._replay is not None:
            return State.REPLAYING
        if self._last is None:
            return State.CONNECTING
        return State.RESET if self._partial else State.LIVE

    @property
    def last_seq(self) -> int | None:
        """The last applied seq (None before any)."""
        return self._last

    @property
    def replay_deadline(self) -> float | None:
        """Monotonic deadline of the replay in flight, if any."""
        return None if self._replay is None else self._replay.deadline

    def start(self, now: Instant) -> Outcome:
        """Warm start: ask for the publisher's whole buffer before any live message arrives."""
        out = Outcome()
        if self._can_replay(now):
            self._request_replay(0, now, out)
        return out

    def on_live(self, batch: Batch, now: Instant) -> Outcome:
        out = Outcome()
        if self._replay is None:
            may_replay = self._can_replay(now)
            self._live(batch, now, out, may_replay=may_replay, gap_reason=ResetReason.GAP)
        else:
            self._hold(batch, now, out)
        return out

    def on_replay(self, ticket: int, item: Batch | ReplayEnd, now: Instant) -> Outcome:
        out = Outcome()
        replay = self._replay
        if replay is None or ticket != replay.ticket:
            out.stale_replies = 1
        elif isinstance(item, ReplayEnd):
            self._finish(ReplayResult.HOLE if replay.hole else ReplayResult.OK, now, out)
        else:
            self._replayed(replay, item, now, out)
        return out

    def on_tick(self, now: Instant) -> Outcome | None:
        """Fail the replay in flight if its deadline has passed; None when nothing happened."""
        replay = self._replay
        if replay is None or now.mono < replay.deadline:
            return None
        out = Outcome(replay_abandoned=True)
        self._finish(ReplayResult.FAILED, now, out)
        return out

    def close(self) -> int:
        """The endpoint is gone (removed, or replaced by a new description): forget its blocks."""
        self._replay = None
        self._last = None
        return self._writer.drop_endpoint(self.endpoint)

    # -- rules -------------------------------------------------------------------------------

    def _can_replay(self, now: Instant) -> bool:
        return self.has_replay and now.mono >= self._cooldown_until

    def _live(
        self,
        batch: Batch,
        now: Instant,
        out: Outcome,
        *,
        may_replay: bool,
        gap_reason: ResetReason,
        in_held: bool = False,
    ) -> None:
        """One live batch outside a replay; ``in_held`` for the batches held during one."""
        last, seq = self._last, batch.seq
        if last is None:
            # Seq 0 is a stream's first batch: nothing before it can be missing.
            if seq != 0 and may_replay:
                self._request_replay(0, now, out, followup=in_held)
                self._hold(batch, now, out)
            else:
                self._apply(batch, now, out, live=True)
        elif seq == last + 1:
            self._apply(batch, now, out, live=True)
        elif seq > last:
            out.gaps += 1
            self.gaps += 1
            if may_replay:
                self._request_replay(last + 1, now, out, followup=in_held)
                self._hold(batch, now, out)
            else:
                self._drop(gap_reason, out)
                self._apply(batch, now, out, live=True)
        elif in_held:
            out.duplicates += 1
        else:
            self._restart(batch, now, out)

    def _restart(self, batch: Batch, now: Instant, out: Outcome) -> None:
        self._replay = None
        self._drop(ResetReason.RESTART, out)
        if batch.seq != 0 and self._can_replay(now):
            self._request_replay(0, now, out)
            self._hold(batch, now, out)
        else:
            self._apply(batch, now, out, live=True)

    def _hold(self, batch: Batch, now: Instant, out: Outcome) -> None:
        replay = self._replay
        assert replay is not None  # noqa: S101  # callers hold only while replaying
        held = replay.held
        if held and batch.seq <= held[-1].seq:
            self._restart(batch, now, out)
            return
        if len(held) >= self.settings.max_held:
            held.popleft()
            out.held_dropped += 1
        held.append(batch)

    def _request_replay(
        self, start: int, now: Instant, out: Outcome, *, followup: bool = False
    ) -> None:
        self._ticket += 1
        self.replays += 1
        deadline = now.mono + self.settings.replay_timeout_s
        self._replay = _Replay(start, self._ticket, deadline, followup)
        out.replay = ReplayRequest(start, self._ticket)

    def _replayed(self, replay: _Replay, batch: Batch, now: Instant, out: Outcome) -> None:
        last, seq = self._last, batch.seq
        if replay.first:
            replay.first = False
            if seq > replay.start and last is not None:
                replay.hole = True
                self._drop(ResetReason.HOLE, out)
        elif last is not None and seq > last + 1:
            out.gaps += 1  # a seq the publisher never managed to send: a permanent hole
            self.gaps += 1
            replay.hole = True
            self._drop(ResetReason.HOLE, out)
        if self._last is not None and seq <= self._last:
            out.duplicates += 1
            return
        replay.applied += 1
        self._apply(batch, now, out, live=False)

    def _finish(self, result: ReplayResult, now: Instant, out: Outcome) -> None:
        replay = self._replay
        assert replay is not None  # noqa: S101  # only called while replaying
        self._replay = None
        out.replays = (*out.replays, result)
        if result is ReplayResult.FAILED:
            self._cooldown_until = now.mono + self.settings.replay_cooldown_s
            reason = ResetReason.REPLAY_FAILED
        else:
            reason = ResetReason.HOLE
        # A gap left between the replay and the held batches (lost after the publisher answered):
        # another replay may fill it. A follow-up that brought nothing asks for no further one,
        # so replays that return nothing cannot loop.
        may_replay = self._can_replay(now) and (replay.applied > 0 or not replay.followup)
        for batch in replay.held:
            if self.state is State.REPLAYING:  # the follow-up: hold the rest for it
                self._hold(batch, now, out)
            else:
                self._live(batch, now, out, may_replay=may_replay, gap_reason=reason, in_held=True)

    def _drop(self, reason: ResetReason, out: Outcome) -> None:
        out.dropped_blocks += self._writer.drop_endpoint(self.endpoint)
        out.resets = (*out.resets, reason)
        self.resets += 1
        self._last = None
        self._partial = True

    def _apply(self, batch: Batch, now: Instant, out: Outcome, *, live: bool) -> None:
        events = batch.events
        if events:
            self._writer.apply(self.endpoint, self.context, events, now.mono)
            for event in events:
                if isinstance(event, BlockStored):
                    out.stored_events += 1
                    out.stored_blocks += len(event.block_hashes)
                elif isinstance(event, BlockRemoved):
                    out.removed_events += 1
                    out.removed_blocks += len(event.block_hashes)
                else:
                    out.cleared_events += 1
        if batch.rejected:
            out.rejected = (*out.rejected, *(r.reason for r in batch.rejected))
        if self._last is None and batch.seq == 0:
            self._partial = False  # the stream's whole history is in: nothing is unknown
        self._last = batch.seq
        out.batches += 1
        if live:
            out.lags.append(now.wall - batch.ts)
