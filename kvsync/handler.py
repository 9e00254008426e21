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
  batch with ``seq <= last`` is skipped: replay and live overlap. A gap left before the held
  batches asks for one follow-up replay; if that brings nothing, it is a hole: drop state.
* First replayed ``seq`` greater than requested, or a gap inside the replay: the publisher's buffer
  no longer covers the hole: drop state, then apply the replayed batches (they are true).
* Live ``seq <= last`` outside a replay (or a held batch whose seq is not above the previous held
  one): the engine restarted, since a publisher never re-sends live messages. Drop state, replay
  from 0 (unless the batch is seq 0 itself).
* Replay deadline passed: the replay failed. Apply the held batches as if there were no replay
  address (a gap drops state) and do not ask for another replay until the cool-down has passed.

A new replay request supersedes the one in flight: its ``ticket`` changes and replies carrying an
older ticket are ignored, so a late reply can never be applied twice.

A BlockStored whose parent block is unknown asks for no replay: it comes with no sequence gap (its
parent was stored before we joined, or before the replay buffer's oldest batch), so a replay
would return nothing new. The index counts such chains and never roots them.
"""

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from kvsync import ingest
from kvsync.model import Batch, BlockRemoved, BlockStored, EndpointId, Event, ReplayEnd

_DEFAULTS: Final = ingest.ReplaySettings()

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


class EndpointHandler(Generic[ContextT]):
    """The sequence state of one endpoint; see the module docstring for the rules."""

    def __init__(
        self,
        endpoint: EndpointId,
        context: ContextT,
        writer: IndexWriter[ContextT],
        *,
        has_replay: bool,
        settings: ingest.ReplaySettings = _DEFAULTS,
    ) -> None:
        self.endpoint, self.context, self.has_replay = endpoint, context, has_replay
        self.settings = settings
        self.gaps = self.resets = self.replays = 0  # replays: requests sent
        self._writer = writer
        self._last: int | None = None
        self._partial = False  # state was dropped and the history before it is unknown
        self._replay: _Replay | None = None
        self._ticket = 0
        self._cooldown_until = float("-inf")

    @property
    def state(self) -> ingest.State:
        if self._replay is not None:
            return ingest.State.REPLAYING
        if self._last is None:
            return ingest.State.CONNECTING
        return ingest.State.RESET if self._partial else ingest.State.LIVE

    @property
    def last_seq(self) -> int | None:  # None before any batch was applied
        return self._last

    @property
    def replay_deadline(self) -> float | None:  # monotonic, of the replay in flight
        return None if self._replay is None else self._replay.deadline

    def start(self, now: ingest.Instant) -> ingest.Outcome:
        """Warm start: ask for the publisher's whole buffer before any live message arrives."""
        out = ingest.Outcome()
        if self._can_replay(now):
            self._request_replay(0, now, out)
        return out

    def on_live(self, batch: Batch, now: ingest.Instant) -> ingest.Outcome:
        out = ingest.Outcome()
        if self._replay is None:
            may_replay = self._can_replay(now)
            self._live(batch, now, out, may_replay=may_replay, gap_reason=ingest.ResetReason.GAP)
        else:
            self._hold(batch, now, out)
        return out

    def on_replay(
        self, ticket: int, item: Batch | ReplayEnd, now: ingest.Instant
    ) -> ingest.Outcome:
        out = ingest.Outcome()
        replay = self._replay
        if replay is None or ticket != replay.ticket:
            out.stale_replies = 1
        elif isinstance(item, ReplayEnd):
            self._finish(
                ingest.ReplayResult.HOLE if replay.hole else ingest.ReplayResult.OK, now, out
            )
        else:
            self._replayed(replay, item, now, out)
        return out

    def on_tick(self, now: ingest.Instant) -> ingest.Outcome | None:
        """Fail the replay in flight if its deadline has passed; None when nothing happened."""
        replay = self._replay
        if replay is None or now.mono < replay.deadline:
            return None
        out = ingest.Outcome(replay_abandoned=True)
        self._finish(ingest.ReplayResult.FAILED, now, out)
        return out

    def close(self) -> int:
        """The endpoint is gone (removed, or replaced by a new description): forget its blocks."""
        self._replay = None
        self._last = None
        return self._writer.drop_endpoint(self.endpoint)

    # -- rules -------------------------------------------------------------------------------

    def _can_replay(self, now: ingest.Instant) -> bool:
        return self.has_replay and now.mono >= self._cooldown_until

    def _live(
        self,
        batch: Batch,
        now: ingest.Instant,
        out: ingest.Outcome,
        *,
        may_replay: bool,
        gap_reason: ingest.ResetReason,
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

    def _restart(self, batch: Batch, now: ingest.Instant, out: ingest.Outcome) -> None:
        self._replay = None
        self._drop(ingest.ResetReason.RESTART, out)
        if batch.seq != 0 and self._can_replay(now):
            self._request_replay(0, now, out)
            self._hold(batch, now, out)
        else:
            self._apply(batch, now, out, live=True)

    def _hold(self, batch: Batch, now: ingest.Instant, out: ingest.Outcome) -> None:
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
        self, start: int, now: ingest.Instant, out: ingest.Outcome, *, followup: bool = False
    ) -> None:
        self._ticket += 1
        self.replays += 1
        deadline = now.mono + self.settings.replay_timeout_s
        self._replay = _Replay(start, self._ticket, deadline, followup)
        out.replay = ingest.ReplayRequest(start, self._ticket)

    def _replayed(
        self, replay: _Replay, batch: Batch, now: ingest.Instant, out: ingest.Outcome
    ) -> None:
        last, seq = self._last, batch.seq
        if replay.first:
            replay.first = False
            if seq > replay.start and last is not None:
                replay.hole = True
                self._drop(ingest.ResetReason.HOLE, out)
        elif last is not None and seq > last + 1:
            out.gaps += 1  # a seq the publisher never managed to send: a permanent hole
            self.gaps += 1
            replay.hole = True
            self._drop(ingest.ResetReason.HOLE, out)
        if self._last is not None and seq <= self._last:
            out.duplicates += 1
            return
        replay.applied += 1
        self._apply(batch, now, out, live=False)

    def _finish(
        self, result: ingest.ReplayResult, now: ingest.Instant, out: ingest.Outcome
    ) -> None:
        replay = self._replay
        assert replay is not None  # noqa: S101  # only called while replaying
        self._replay = None
        out.replays = (*out.replays, result)
        if result is ingest.ReplayResult.FAILED:
            self._cooldown_until = now.mono + self.settings.replay_cooldown_s
            reason = ingest.ResetReason.REPLAY_FAILED
        else:
            reason = ingest.ResetReason.HOLE
        # A gap left between the replay and the held batches (lost after the publisher answered):
        # another replay may fill it. A follow-up that brought nothing asks for no further one,
        # so replays that return nothing cannot loop.
        may_replay = self._can_replay(now) and (replay.applied > 0 or not replay.followup)
        for batch in replay.held:
            if self.state is ingest.State.REPLAYING:  # the follow-up: hold the rest for it
                self._hold(batch, now, out)
            else:
                self._live(batch, now, out, may_replay=may_replay, gap_reason=reason, in_held=True)

    def _drop(self, reason: ingest.ResetReason, out: ingest.Outcome) -> None:
        out.dropped_blocks += self._writer.drop_endpoint(self.endpoint)
        out.resets = (*out.resets, reason)
        self.resets += 1
        self._last = None
        self._partial = True

    def _apply(self, batch: Batch, now: ingest.Instant, out: ingest.Outcome, *, live: bool) -> None:
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
