"""Per-endpoint sequence state machine: apply, hold during replay, gap, restart, hole.

Pure: no sockets, clocks, threads or logging. Time comes in as an ``Instant``; index writes go
through the two methods of ``IndexWriter``; everything else comes back as an ``Outcome`` value (the
replay request to send, and what happened, for counters and logs). The subscriber manager owns one
``EndpointHandler`` per endpoint, on the ingest thread, and performs the I/O the outcome asks for.
Raises nothing of its own; whatever the writer raises propagates.

Rules (docs/architecture.md, "Sequence, replay, restart"). Two marks per endpoint: ``last_live``,
the highest seq seen on the live (SUB) socket, and ``last``, the highest seq applied. They differ
because the replay runs over its own TCP connection (a DEALER) and may overtake the live copies
of the same seqs when the SUB side lags.

* Warm start: an endpoint with a replay address asks for replay from 0 as soon as it is started;
  or, when a shared index kept this incarnation's blocks up to seq ``s`` (``start(resumed=s)``:
  this daemon restarted), from ``s + 1``. A first live seq at or below ``s`` then means the
  publisher restarted too (nothing this process replayed can be re-sent below what it found
  stored): a restart, as below.
* First live message (unless its seq is 0: a stream's first batch), or ``seq > last + 1``: ask for
  replay from ``last + 1`` (0 when nothing was applied) and hold the live batch. Without a replay
  address (or while cooling down after a failed replay) the gap cannot be filled: drop the
  endpoint's state and apply the live batch.
* Live ``seq <= last_live``: the engine restarted, since a publisher never re-sends a live seq.
  Drop state, replay from 0 (unless the batch is seq 0 itself). Live ``last_live < seq <= last``
  is the live copy of a batch the replay already applied: a duplicate, skipped and counted.
* While replaying, live batches are held (at most ``max_held``, the oldest dropped first: the
  replay most likely covers those). After the end marker they are applied in order, every one
  with ``seq <= last`` skipped as a duplicate. A gap left before the held batches asks for one
  follow-up replay; if that brings nothing, it is a hole: drop state.
* First replayed ``seq`` greater than requested, or a gap inside the replay: the publisher's buffer
  no longer covers the hole: drop state, then apply the replayed batches (they are true). On a
  warm start there is nothing to drop, but history before the buffer is unknown: state ``reset``.
* Replay deadline: an idle timeout (``replay_timeout_s`` after the request or the last reply) with
  an overall cap that grows with the batches delivered (``replay_cap_per_batch_s`` each), so a
  long warm start that keeps streaming is no failure. Past it the replay failed: apply the held
  batches as if there were no replay address (a gap drops state) and do not ask for another
  replay until the cool-down has passed.
* Lost removals: a batch that carries a rejected event which may have removed blocks (a
  BlockRemoved or AllBlocksCleared that failed to decode, or an event whose type is unreadable),
  or a whole message that could not be decoded (``lost_batch``: its seq was readable), may leave
  holders that are stale. Its good events are applied, then the endpoint's state is dropped
  (``lost_removal`` / ``undecodable``) and ingest continues after that seq. A live message whose
  seq is unreadable (``on_garbled``) cannot be placed in the stream: the state is dropped at once,
  or, during a replay, once the replay and the held batches are applied.

A new replay request supersedes the one in flight: its ``ticket`` changes and replies carrying an
older ticket are ignored, so a late reply can never be applied twice.

A BlockStored whose parent block is unknown asks for no replay: it comes with no sequence gap (its
parent was stored before we joined, or before the replay buffer's oldest batch), so a replay
would return nothing new. The index counts such chains and never roots them.
"""

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Generic, Protocol, TypeVar

from kvsync.errors import DecodeError
from kvsync.ingest.values import (
    Instant,
    Outcome,
    ReplayRequest,
    ReplayResult,
    ReplaySettings,
    ResetReason,
    State,
)
from kvsync.model import Batch, BlockRemoved, BlockStored, EndpointId, Event, Rejection, ReplayEnd

_DEFAULTS: Final = ReplaySettings()

ContextT = TypeVar("ContextT")
ContextT_contra = TypeVar("ContextT_contra", contravariant=True)


class IndexWriter(Protocol[ContextT_contra]):
    """The two index writes the handler performs: the part of ``kvsync.index.backend.IndexBackend``
    it needs (``kvsync.ingest.endpoint.EndpointWriter`` forwards them), so unit tests can record."""

    def apply(
        self,
        endpoint: EndpointId,
        context: ContextT_contra,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> object:
        """Apply one batch's events in order; ``now`` is wall-clock seconds (``Instant.wall``),
        ``seq`` the batch's sequence number (what explain names a removal by; a shared backend
        stores it with the blocks: see ``start``)."""
        ...

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        """Forget every block of the endpoint; returns how many were dropped."""
        ...


def lost_batch(error: DecodeError) -> Batch:
    """The stand-in for a message whose seq was readable but whose payload was not: no events,
    one rejection (position -1) that may have been a removal. ``error.seq`` must be set."""
    assert error.seq is not None  # noqa: S101  # callers pass only errors with a seq
    return Batch(error.seq, math.nan, None, (), (Rejection(-1, error.reason, error.detail),))


def _is_lost(batch: Batch) -> bool:
    rejected = batch.rejected
    return bool(rejected) and rejected[0].position < 0


@dataclass(slots=True)
class _Replay:
    start: int
    ticket: int
    requested_at: float  # monotonic
    idle_deadline: float
    followup: bool  # asked for by the held batches of the previous replay
    first: bool = True
    hole: bool = False
    garbled: bool = False  # a live message with an unreadable seq arrived meanwhile
    applied: int = 0
    received: int = 0  # replies of this request, duplicates included
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
        settings: ReplaySettings = _DEFAULTS,
    ) -> None:
        self.endpoint, self.context, self.has_replay = endpoint, context, has_replay
        self.settings = settings
        self.gaps = self.resets = self.replays = 0  # replays: requests sent
        self.duplicates = 0  # live copies of batches a replay had applied, skipped
        self.reset_reasons: dict[str, int] = {}  # resets by ResetReason value
        self._writer = writer
        self._last: int | None = None  # highest seq applied
        self._last_live: int | None = None  # highest seq seen on the live socket
        self._resumed: int | None = None  # the stored seq this handler started from, if any
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
    def last_seq(self) -> int | None:  # None before any batch was applied
        return self._last

    @property
    def replay_deadline(self) -> float | None:  # monotonic, of the replay in flight
        replay = self._replay
        if replay is None:
            return None
        settings = self.settings
        cap = (
            replay.requested_at
            + settings.replay_timeout_s
            + replay.received * settings.replay_cap_per_batch_s
        )
        return min(replay.idle_deadline, cap)

    def start(self, now: Instant, resumed: int | None = None) -> Outcome:
        """Warm start: ask for the publisher's whole buffer before any live message arrives; or,
        when the index still holds this incarnation's blocks up to seq ``resumed`` (a shared
        backend, after a restart of this daemon), only for what follows it. A buffer that no
        longer reaches ``resumed + 1`` is a hole, as any other."""
        out = Outcome()
        if resumed is not None:
            self._last = self._resumed = resumed
        if self._can_replay(now):
            self._request_replay(0 if resumed is None else resumed + 1, now, out)
        return out

    def on_live(self, batch: Batch, now: Instant) -> Outcome:
        """A live batch (or a ``lost_batch`` for a live message that could not be decoded)."""
        out = Outcome()
        last_live = self._last_live
        if last_live is not None and batch.seq <= last_live:
            self._restart(batch, now, out)
            return out
        if last_live is None and self._resumed is not None and batch.seq <= self._resumed:
            # Below the seq stored before this process started: no replay of ours can have
            # applied it, so the publisher's stream went back: it restarted meanwhile.
            self._restart(batch, now, out)
            return out
        self._last_live = batch.seq
        if self._replay is None:
            may_replay = self._can_replay(now)
            self._live(batch, now, out, may_replay=may_replay, gap_reason=ResetReason.GAP)
        else:
            self._hold(batch, now, out)
        return out

    def on_garbled(self, now: Instant) -> Outcome:
        """A live message whose seq cannot be read: it may have held removals (see above)."""
        out = Outcome()
        if self._replay is not None:
            self._replay.garbled = True
        else:
            last = self._last
            self._drop(ResetReason.UNDECODABLE, out)
            self._last = last
        return out

    def on_replay(self, ticket: int, item: Batch | ReplayEnd, now: Instant) -> Outcome:
        out = Outcome()
        replay = self._replay
        if replay is None or ticket != replay.ticket:
            out.stale_replies = 1
            return out
        replay.received += 1
        replay.idle_deadline = now.mono + self.settings.replay_timeout_s
        if isinstance(item, ReplayEnd):
            self._finish(ReplayResult.HOLE if replay.hole else ReplayResult.OK, now, out)
        else:
            self._replayed(replay, item, now, out)
        return out

    def on_tick(self, now: Instant) -> Outcome | None:
        """Fail the replay in flight if its deadline has passed; None when nothing happened."""
        deadline = self.replay_deadline
        if deadline is None or now.mono < deadline:
            return None
        out = Outcome(replay_abandoned=True)
        self._finish(ReplayResult.FAILED, now, out)
        return out

    def close(self) -> int:
        """The endpoint is gone (removed, or replaced by a new description): forget its blocks."""
        self._replay = None
        self._last = self._last_live = None
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
        else:
            # last_live < seq <= last (on_live checked the first): the replay overtook the live
            # path and already applied this batch.
            out.duplicates += 1
            self.duplicates += 1

    def _restart(self, batch: Batch, now: Instant, out: Outcome) -> None:
        self._replay = None
        self._drop(ResetReason.RESTART, out)
        self._last_live = batch.seq
        if batch.seq != 0 and self._can_replay(now):
            self._request_replay(0, now, out)
            self._hold(batch, now, out)
        else:
            self._apply(batch, now, out, live=True)

    def _hold(self, batch: Batch, now: Instant, out: Outcome) -> None:
        replay = self._replay
        assert replay is not None  # noqa: S101  # callers hold only while replaying
        held = replay.held  # in seq order: on_live saw each above last_live
        if len(held) >= self.settings.max_held:
            held.popleft()
            out.held_dropped += 1
        held.append(batch)

    def _request_replay(
        self, start: int, now: Instant, out: Outcome, *, followup: bool = False
    ) -> None:
        self._ticket += 1
        self.replays += 1
        idle_deadline = now.mono + self.settings.replay_timeout_s
        self._replay = _Replay(start, self._ticket, now.mono, idle_deadline, followup)
        out.replay = ReplayRequest(start, self._ticket)

    def _replayed(self, replay: _Replay, batch: Batch, now: Instant, out: Outcome) -> None:
        last, seq = self._last, batch.seq
        if replay.first:
            replay.first = False
            if seq > replay.start:
                replay.hole = True
                if last is not None:
                    self._drop(ResetReason.HOLE, out)
                else:  # a warm start: nothing to drop, but what came before seq is unknown
                    self._partial = True
        elif last is not None and seq > last + 1:
            out.gaps += 1  # a seq the publisher never managed to send: a permanent hole
            self.gaps += 1
            replay.hole = True
            self._drop(ResetReason.HOLE, out)
        if self._last is not None and seq <= self._last:
            out.duplicates += 1
            self.duplicates += 1
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
        if replay.garbled:
            followup = self._followup()
            if followup is not None:  # the follow-up takes the mark along
                followup.garbled = True
            else:
                last = self._last
                self._drop(ResetReason.UNDECODABLE, out)
                self._last = last

    def _followup(self) -> _Replay | None:
        """The replay in flight (a method: mypy would keep ``_replay`` narrowed to None)."""
        return self._replay

    def _drop(self, reason: ResetReason, out: Outcome) -> None:
        out.dropped_blocks += self._writer.drop_endpoint(self.endpoint)
        out.resets = (*out.resets, reason)
        self.resets += 1
        self.reset_reasons[reason.value] = self.reset_reasons.get(reason.value, 0) + 1
        self._last = None
        self._partial = True

    def _apply(self, batch: Batch, now: Instant, out: Outcome, *, live: bool) -> None:
        """Apply the batch's good events; then, if it may have lost a removal, drop the state
        (after the events: a stored block the lost removal named must not survive)."""
        events = batch.events
        if events:
            self._writer.apply(self.endpoint, self.context, events, now.wall, batch.seq)
            for event in events:
                if isinstance(event, BlockStored):
                    out.stored_events += 1
                    out.stored_blocks += len(event.block_hashes)
                elif isinstance(event, BlockRemoved):
                    out.removed_events += 1
                    out.removed_blocks += len(event.block_hashes)
                else:
                    out.cleared_events += 1
        if self._last is None and batch.seq == 0:
            self._partial = False  # the stream's whole history is in: nothing is unknown
        if batch.rejected:
            if _is_lost(batch):
                self._drop(ResetReason.UNDECODABLE, out)  # counted as a decode error
                self._last = batch.seq
                return
            out.rejected = (*out.rejected, *(r.reason for r in batch.rejected))
            if any(r.may_be_removal for r in batch.rejected):
                self._drop(ResetReason.LOST_REMOVAL, out)
        self._last = batch.seq
        out.batches += 1
        if live:
            out.lags.append(now.wall - batch.ts)
