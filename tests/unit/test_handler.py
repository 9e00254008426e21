"""The per-endpoint sequence state machine, rule by rule, against a recording index writer.

Each test batch carries one BlockRemoved whose hash names the batch (incarnation << 32 | seq), so
the writer's log shows exactly which batches were applied, in which order, and where the
endpoint's state was dropped.
"""

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.errors import DecodeError, Reason
from kvsync.ingest.sequencer import EndpointHandler, lost_batch
from kvsync.ingest.values import (
    Instant,
    Outcome,
    ReplayRequest,
    ReplayResult,
    ReplaySettings,
    ResetReason,
    State,
)
from kvsync.model import (
    AllBlocksCleared,
    Batch,
    BlockRemoved,
    BlockStored,
    EndpointId,
    Event,
    Rejection,
    ReplayEnd,
    encode_tokens,
)

EP = EndpointId("default/vllm-0", 0)
DROP = "drop"


@dataclass
class RecordingWriter:
    """Logs every write: the applied batch ids, and DROP where the state was dropped."""

    log: list[int | str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    held: int = 0

    def apply(
        self,
        endpoint: EndpointId,
        context: str,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> None:
        assert endpoint == EP
        assert seq is not None
        self.contexts.append(context)
        for event in events:
            if isinstance(event, BlockRemoved):
                assert isinstance(event.block_hashes[0], int)
                self.log.append(event.block_hashes[0])
        self.held += 1

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        assert endpoint == EP
        self.log.append(DROP)
        dropped, self.held = self.held, 0
        return dropped


def batch(seq: int, incarnation: int = 0, ts: float = 100.0) -> Batch:
    return Batch(seq, ts, 0, [BlockRemoved([incarnation << 32 | seq])])


def at(t: float) -> Instant:
    return Instant(t, t)


def make(
    *, has_replay: bool = True, timeout: float = 5.0, cooldown: float = 30.0, max_held: int = 64
) -> tuple[EndpointHandler[str], RecordingWriter]:
    writer = RecordingWriter()
    handler = EndpointHandler(
        EP,
        "ctx",
        writer,
        has_replay=has_replay,
        settings=ReplaySettings(
            replay_timeout_s=timeout, replay_cooldown_s=cooldown, max_held=max_held
        ),
    )
    return handler, writer


def replay_all(
    h: EndpointHandler[str], ticket: int, seqs: Sequence[int], t: float = 1.0
) -> Outcome:
    """Deliver a replay reply: the batches, then the end marker; returns the end's outcome."""
    for seq in seqs:
        h.on_replay(ticket, batch(seq), at(t))
    return h.on_replay(ticket, ReplayEnd(), at(t))


# -- no replay address ---------------------------------------------------------------------------


def test_without_replay_the_first_message_is_applied_whatever_its_seq() -> None:
    h, w = make(has_replay=False)
    assert h.start(at(0)).replay is None
    assert h.state is State.CONNECTING
    for seq in (7, 8, 9):
        out = h.on_live(batch(seq), at(1))
        assert out.replay is None
    assert w.log == [7, 8, 9]
    assert (h.state, h.last_seq, h.gaps, h.resets) == (State.LIVE, 9, 0, 0)


def test_without_replay_a_gap_drops_the_state_and_continues_live() -> None:
    h, w = make(has_replay=False)
    for seq in (0, 1):
        h.on_live(batch(seq), at(1))
    out = h.on_live(batch(4), at(2))
    assert (out.gaps, out.resets, out.dropped_blocks, out.replay) == (
        1,
        (ResetReason.GAP,),
        2,
        None,
    )
    h.on_live(batch(5), at(2))
    assert w.log == [0, 1, DROP, 4, 5]
    assert (h.state, h.gaps, h.resets) == (State.RESET, 1, 1)


@pytest.mark.parametrize(("new_seq", "state"), [(0, State.LIVE), (1, State.RESET)])
def test_without_replay_a_restart_drops_the_state_and_applies(new_seq: int, state: State) -> None:
    h, w = make(has_replay=False)
    for seq in (0, 1, 2):
        h.on_live(batch(seq), at(1))
    out = h.on_live(batch(new_seq, incarnation=1), at(2))
    assert out.resets == (ResetReason.RESTART,)
    assert w.log == [0, 1, 2, DROP, 1 << 32 | new_seq]
    # A new stream seen from seq 0 is complete again; one that starts later misses history.
    assert h.state is state


# -- warm start and gaps with replay ------------------------------------------------------------


def test_warm_start_asks_for_replay_from_zero_and_holds_live_frames() -> None:
    h, w = make()
    out = h.start(at(0))
    assert out.replay == ReplayRequest(start=0, ticket=1)
    assert h.state is State.REPLAYING
    h.on_live(batch(3), at(0.5))
    h.on_live(batch(4), at(0.5))
    assert w.log == []  # held until the replay ends
    end = replay_all(h, 1, [0, 1, 2, 3])
    assert end.replays == (ReplayResult.OK,)
    assert end.duplicates == 1  # held seq 3 was replayed already
    assert w.log == [0, 1, 2, 3, 4]
    assert (h.state, h.last_seq, h.replays) == (State.LIVE, 4, 1)


def test_warm_start_on_an_idle_publisher_then_seq_zero_needs_no_second_replay() -> None:
    h, w = make()
    h.start(at(0))
    replay_all(h, 1, [])
    assert h.state is State.CONNECTING
    assert h.on_live(batch(0), at(1)).replay is None
    assert w.log == [0]


def test_first_live_message_past_zero_asks_for_replay_from_zero() -> None:
    h, w = make()
    warm = h.start(at(0)).replay
    assert warm is not None
    replay_all(h, warm.ticket, [])  # the publisher had nothing yet
    out = h.on_live(batch(5), at(1))
    assert out.replay == ReplayRequest(start=0, ticket=2)
    replay_all(h, 2, [3, 4, 5])  # a truncated buffer: nothing to drop, so no reset counted,
    assert w.log == [3, 4, 5]
    # but seqs 0..2 are unknown (blocks they stored are missing): the state says so.
    assert (h.state, h.resets) == (State.RESET, 0)


def test_gap_is_recovered_by_replay_from_last_plus_one() -> None:
    h, w = make(has_replay=False)
    h.has_replay = True  # start live without a warm start, to isolate the gap rule
    for seq in (0, 1):
        h.on_live(batch(seq), at(1))
    out = h.on_live(batch(4), at(2))
    assert (out.gaps, out.replay) == (1, ReplayRequest(start=2, ticket=1))
    h.on_live(batch(5), at(2))
    end = replay_all(h, 1, [2, 3, 4])
    assert (end.replays, end.resets, end.duplicates) == ((ReplayResult.OK,), (), 1)
    assert w.log == [0, 1, 2, 3, 4, 5]
    assert (h.state, h.gaps, h.resets) == (State.LIVE, 1, 0)


def live_then_gap(h: EndpointHandler[str], upto: int, gap_to: int, t: float = 1.0) -> int:
    """Apply 0..upto live, then a gap to ``gap_to``; returns the replay ticket."""
    h.has_replay = False
    for seq in range(upto + 1):
        h.on_live(batch(seq), at(t))
    h.has_replay = True
    request = h.on_live(batch(gap_to), at(t)).replay
    assert request is not None
    assert request.start == upto + 1
    return request.ticket


def test_hole_beyond_the_replay_buffer_drops_state_then_applies_the_replay() -> None:
    h, w = make()
    ticket = live_then_gap(h, 1, 5)
    out = h.on_replay(ticket, batch(4), at(1))
    assert out.resets == (ResetReason.HOLE,)
    end = h.on_replay(ticket, ReplayEnd(), at(1))
    assert end.replays == (ReplayResult.HOLE,)
    assert w.log == [0, 1, DROP, 4, 5]
    assert (h.state, h.resets) == (State.RESET, 1)


def test_a_gap_inside_the_replay_is_a_permanent_hole() -> None:
    h, w = make()
    ticket = live_then_gap(h, 1, 6)
    end = replay_all(h, ticket, [2, 4, 5, 6])
    assert end.replays == (ReplayResult.HOLE,)
    assert w.log == [0, 1, 2, DROP, 4, 5, 6]
    assert h.state is State.RESET


def test_a_gap_left_after_the_replay_asks_once_more_then_is_a_hole() -> None:
    h, w = make()
    ticket = live_then_gap(h, 1, 9)
    end = replay_all(h, ticket, [2, 3])  # answered before 4..8 were published
    assert (end.replays, end.resets) == ((ReplayResult.OK,), ())
    assert end.replay == ReplayRequest(start=4, ticket=ticket + 1)
    h.on_live(batch(10), at(1))
    followup = replay_all(h, ticket + 1, [])  # brought nothing: no third replay
    assert (followup.replay, followup.resets) == (None, (ResetReason.HOLE,))
    assert w.log == [0, 1, 2, 3, DROP, 9, 10]


# -- restart ------------------------------------------------------------------------------------


def test_seq_going_back_is_a_restart_drop_then_replay_from_zero() -> None:
    h, w = make()
    h.start(at(0))
    replay_all(h, 1, [0, 1, 2, 3], t=0)
    h.on_live(batch(4), at(1))
    assert w.log == [0, 1, 2, 3, 4]
    out = h.on_live(batch(2, incarnation=1), at(2))
    assert out.resets == (ResetReason.RESTART,)
    assert out.replay == ReplayRequest(start=0, ticket=2)
    for seq in (0, 1, 2):
        h.on_replay(2, batch(seq, incarnation=1), at(2))
    h.on_replay(2, ReplayEnd(), at(2))
    assert w.log == [0, 1, 2, 3, 4, DROP, 1 << 32, 1 << 32 | 1, 1 << 32 | 2]
    assert h.state is State.LIVE  # the new stream is complete from seq 0


def test_a_restart_while_replaying_supersedes_the_replay() -> None:
    h, w = make()
    assert h.start(at(0)).replay == ReplayRequest(0, 1)
    h.on_live(batch(8), at(0))
    out = h.on_live(batch(1, incarnation=1), at(0))  # held seqs went back: new engine
    assert out.resets == (ResetReason.RESTART,)
    assert out.replay == ReplayRequest(0, 2)
    assert h.on_replay(1, batch(0), at(0)).stale_replies == 1  # old request: ignored
    h.on_replay(2, batch(0, incarnation=1), at(0))
    h.on_replay(2, batch(1, incarnation=1), at(0))
    h.on_replay(2, ReplayEnd(), at(0))
    assert w.log == [DROP, 1 << 32, 1 << 32 | 1]


# -- deadline and cool-down ---------------------------------------------------------------------


def test_replay_deadline_fails_the_replay_drops_state_and_cools_down() -> None:
    h, w = make(timeout=5.0, cooldown=30.0)
    ticket = live_then_gap(h, 1, 4, t=10.0)
    h.on_live(batch(5), at(11))
    assert h.replay_deadline == 15.0
    assert h.on_tick(at(14.9)) is None
    out = h.on_tick(at(15.0))
    assert out is not None
    assert out.replay_abandoned
    assert (out.replays, out.resets) == ((ReplayResult.FAILED,), (ResetReason.REPLAY_FAILED,))
    assert w.log == [0, 1, DROP, 4, 5]
    assert h.on_replay(ticket, batch(2), at(16)).stale_replies == 1  # late reply: ignored
    during = h.on_live(batch(9), at(44.9))  # still cooling down: gap handled without replay
    assert (during.replay, during.resets) == (None, (ResetReason.GAP,))
    after = h.on_live(batch(12), at(45.0))
    assert after.replay == ReplayRequest(start=10, ticket=2)


def test_a_failed_replay_that_already_filled_the_gap_drops_nothing() -> None:
    h, w = make()
    ticket = live_then_gap(h, 1, 4)
    h.on_replay(ticket, batch(2), at(2))
    h.on_replay(ticket, batch(3), at(2))
    out = h.on_tick(at(100))
    assert out is not None
    assert (out.replays, out.resets) == ((ReplayResult.FAILED,), ())
    assert w.log == [0, 1, 2, 3, 4]
    assert h.state is State.LIVE


def test_warm_start_replay_failing_on_an_idle_publisher_leaves_the_endpoint_connecting() -> None:
    h, w = make()
    h.start(at(0))
    out = h.on_tick(at(5))
    assert out is not None
    assert (out.replays, out.resets) == ((ReplayResult.FAILED,), ())
    assert h.state is State.CONNECTING
    assert h.on_live(batch(3), at(6)).replay is None  # cooling down: applied as it comes
    assert w.log == [3]


# -- bounded hold, counts, stale replies ---------------------------------------------------------


@pytest.mark.parametrize(("followup", "log"), [([5, 6], [5, 6, 7]), ([], [DROP, 6, 7])])
def test_the_hold_buffer_is_bounded(followup: list[int], log: list[int | str]) -> None:
    h, w = make(max_held=2)
    ticket = live_then_gap(h, 1, 5)
    out6, out7 = h.on_live(batch(6), at(1)), h.on_live(batch(7), at(1))
    assert (out6.held_dropped, out7.held_dropped) == (0, 1)  # 5 went out
    end = replay_all(h, ticket, [2, 3, 4])
    assert end.replay == ReplayRequest(start=5, ticket=ticket + 1)
    replay_all(h, ticket + 1, followup)  # recovers 5 if the buffer still has it, else a hole
    assert w.log == [0, 1, 2, 3, 4, *log]


def test_replies_without_a_replay_in_flight_are_stale() -> None:
    h, w = make(has_replay=False)
    assert h.on_replay(1, batch(0), at(0)).stale_replies == 1
    assert h.on_replay(1, ReplayEnd(), at(0)).stale_replies == 1
    assert w.log == []


def test_outcome_counts_events_blocks_rejections_and_lag() -> None:
    h, w = make(has_replay=False)
    stored = BlockStored([11, 12], None, encode_tokens([1, 2, 3, 4]), 2)
    events: list[Event] = [stored, BlockRemoved([11]), AllBlocksCleared()]
    rejected = (Rejection(3, Reason.TOKENS, "bad"), Rejection(4, Reason.HASH, "bad"))
    out = h.on_live(Batch(0, 99.5, 0, events, rejected), Instant(7.0, 100.0))
    assert (out.batches, out.stored_events, out.removed_events, out.cleared_events) == (1, 1, 1, 1)
    assert (out.stored_blocks, out.removed_blocks) == (2, 1)
    assert out.rejected == (Reason.TOKENS, Reason.HASH)
    assert out.lags == [0.5]
    assert w.contexts == ["ctx"]


def test_replayed_batches_report_no_lag_but_held_ones_do() -> None:
    h, _ = make()
    h.start(at(0))
    h.on_live(Batch(1, 90.0, 0, [BlockRemoved([1])]), Instant(0, 100.0))
    h.on_replay(1, Batch(0, 50.0, 0, [BlockRemoved([0])]), Instant(0, 100.0))
    end = h.on_replay(1, ReplayEnd(), Instant(0, 101.0))
    assert end.lags == [11.0]


def test_close_forgets_the_endpoint() -> None:
    h, w = make(has_replay=False)
    h.on_live(batch(0), at(0))
    assert h.close() == 1
    assert w.log == [0, DROP]
    assert (h.state, h.last_seq) == (State.CONNECTING, None)


# -- properties ------------------------------------------------------------------------------


@dataclass
class Publisher:
    """A publisher model: incarnations with seqs from 0, a bounded replay buffer."""

    buffer_steps: int
    incarnation: int = 0
    next_seq: int = 0
    buffer: deque[Batch] = field(default_factory=deque)

    def publish(self) -> Batch:
        b = batch(self.next_seq, self.incarnation)
        self.next_seq += 1
        self.buffer.append(b)
        if len(self.buffer) > self.buffer_steps:
            self.buffer.popleft()
        return b

    def restart(self) -> None:
        self.incarnation += 1
        self.next_seq = 0
        self.buffer.clear()

    def reply(self, start: int) -> list[Batch | ReplayEnd]:
        return [*(b for b in self.buffer if b.seq >= start), ReplayEnd()]


STEPS = st.lists(
    st.sampled_from(["publish", "lose", "restart", "reply", "reply_stale", "tick", "wait"]),
    max_size=80,
)


def check_segments(log: list[int | str]) -> None:
    """Between drops, applied batches are distinct and in strictly increasing seq order."""
    previous: int | None = None
    for entry in log:
        if entry == DROP:
            previous = None
            continue
        assert isinstance(entry, int)
        seq = entry & 0xFFFF_FFFF
        assert previous is None or seq > previous, log
        previous = seq


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, buffer_steps=st.integers(1, 8), has_replay=st.booleans())
def test_random_interleavings_never_apply_a_seq_twice_or_out_of_order(
    steps: list[str], buffer_steps: int, has_replay: bool
) -> None:
    h, w = make(has_replay=has_replay, timeout=3.0, cooldown=5.0, max_held=4)
    pub = Publisher(buffer_steps)
    pending: deque[tuple[int, Batch | ReplayEnd]] = deque()  # replies in flight, with ticket
    old: list[tuple[int, Batch | ReplayEnd]] = []
    now = 0.0

    def follow(out: Outcome | None) -> None:
        if out is not None and out.replay is not None:
            old.extend(pending)
            pending.clear()
            pending.extend((out.replay.ticket, item) for item in pub.reply(out.replay.start))

    follow(h.start(at(now)))
    for step in steps:
        if step == "publish":
            follow(h.on_live(pub.publish(), at(now)))
        elif step == "lose":
            pub.publish()
        elif step == "restart":
            pub.restart()
        elif step == "reply" and pending:
            follow(h.on_replay(*pending.popleft(), at(now)))
        elif step == "reply_stale" and old:
            assert h.on_replay(*old.pop(), at(now)).stale_replies == 1
        elif step == "tick":
            follow(h.on_tick(at(now)))
        elif step == "wait":
            now += 1.0
        check_segments(w.log)


@settings(max_examples=200, deadline=None)
@given(losses=st.lists(st.booleans(), min_size=1, max_size=60), interleave=st.integers(0, 3))
def test_with_a_covering_buffer_every_loss_is_recovered_exactly_once_in_order(
    losses: list[bool], interleave: int
) -> None:
    h, w = make()
    pub = Publisher(buffer_steps=1000)
    pending: deque[tuple[int, Batch | ReplayEnd]] = deque()

    def follow(out: Outcome) -> None:
        if out.replay is not None:
            assert not pending
            pending.extend((out.replay.ticket, item) for item in pub.reply(out.replay.start))

    follow(h.start(at(0)))
    for lost in losses:
        b = pub.publish()
        if not lost:
            follow(h.on_live(b, at(0)))
        for _ in range(interleave):  # replies interleave with live traffic
            if pending:
                follow(h.on_replay(*pending.popleft(), at(0)))
    while pending:
        follow(h.on_replay(*pending.popleft(), at(0)))
    # Every batch up to the last one received, each once, in order; a loss at the very end is
    # recovered only if a replay answered after it happened.
    received = [seq for seq, lost in enumerate(losses) if not lost]
    assert w.log == list(range(len(w.log)))
    assert len(w.log) >= (received[-1] + 1 if received else 0)
    assert h.resets == 0


# -- a replay that overtakes the live path (the design's §4, revised) ------------------------


def test_live_copies_of_replayed_seqs_are_duplicates_not_a_restart() -> None:
    # The SUB side lags: after a gap at seq 6 the replay (5..8) arrives before live 7 and 8.
    h, w = make()
    ticket = live_then_gap(h, 4, 6)
    end = replay_all(h, ticket, [5, 6, 7, 8])
    assert (end.replays, end.resets, end.duplicates) == ((ReplayResult.OK,), (), 1)
    late = [h.on_live(batch(seq), at(1)) for seq in (7, 8)]
    assert [(o.resets, o.replay, o.duplicates) for o in late] == [((), None, 1)] * 2
    h.on_live(batch(9), at(1))
    assert w.log == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert (h.state, h.last_seq, h.resets, h.replays) == (State.LIVE, 9, 0, 1)


def test_a_live_seq_at_or_below_the_last_live_one_is_a_restart_even_below_last() -> None:
    h, _ = make()
    ticket = live_then_gap(h, 4, 6)
    replay_all(h, ticket, [5, 6, 7, 8])
    h.on_live(batch(7), at(1))  # the late copy: last_live is 7 now
    out = h.on_live(batch(7, incarnation=1), at(1))  # 7 again on the live socket: a new engine
    assert out.resets == (ResetReason.RESTART,)
    assert out.replay == ReplayRequest(start=0, ticket=ticket + 1)


def test_held_batches_that_go_back_are_a_restart() -> None:
    h, _ = make()
    h.start(at(0))
    h.on_live(batch(8), at(0))
    out = h.on_live(batch(8, incarnation=1), at(0))
    assert out.resets == (ResetReason.RESTART,)


@dataclass
class Delayed:
    """Live frames delivered ``lag`` steps late, as through a backlogged SUB socket."""

    lag: int
    queue: deque[Batch] = field(default_factory=deque)


@settings(max_examples=300, deadline=None)
@given(
    losses=st.lists(st.booleans(), min_size=1, max_size=60),
    lag=st.integers(0, 6),
    replies_per_step=st.integers(1, 4),
)
def test_a_lagging_live_path_with_a_covering_buffer_never_resets(
    losses: list[bool], lag: int, replies_per_step: int
) -> None:
    h, w = make(max_held=1000)
    pub = Publisher(buffer_steps=1000)
    live = Delayed(lag)
    pending: deque[tuple[int, Batch | ReplayEnd]] = deque()

    def follow(out: Outcome) -> None:
        assert out.resets == (), w.log
        if out.replay is not None:
            pending.clear()  # superseded
            pending.extend((out.replay.ticket, item) for item in pub.reply(out.replay.start))

    follow(h.start(at(0)))
    for lost in losses:
        b = pub.publish()
        if not lost:
            live.queue.append(b)
        while len(live.queue) > live.lag:
            follow(h.on_live(live.queue.popleft(), at(0)))
        for _ in range(replies_per_step):  # the replay path runs ahead of the live one
            if pending:
                follow(h.on_replay(*pending.popleft(), at(0)))
    while live.queue or pending:
        if pending:
            follow(h.on_replay(*pending.popleft(), at(0)))
        else:
            follow(h.on_live(live.queue.popleft(), at(0)))
    check_segments(w.log)
    assert DROP not in w.log
    assert h.resets == 0


# -- lost removals and undecodable messages -----------------------------------------------------


def stored(seq: int) -> BlockStored:
    return BlockStored([1 << 40 | seq], None, encode_tokens([seq]), 1)


@pytest.mark.parametrize(
    ("kind", "reset"),
    [
        ("BlockRemoved", (ResetReason.LOST_REMOVAL,)),
        ("AllBlocksCleared", (ResetReason.LOST_REMOVAL,)),
        (None, (ResetReason.LOST_REMOVAL,)),  # type unreadable: it may have been a removal
        ("BlockStored", ()),  # a missing store only under-reports
        ("KVCacheFutureEvent", ()),  # a type kvsync does not know removes nothing it knows
    ],
)
def test_a_rejected_event_that_may_remove_drops_the_state_after_the_good_events(
    kind: str | None, reset: tuple[ResetReason, ...]
) -> None:
    h, w = make(has_replay=False)
    h.on_live(batch(0), at(1))
    bad = Rejection(1, Reason.HASH, "bad hash", kind)
    out = h.on_live(Batch(1, 100.0, 0, [BlockRemoved([7])], (bad,)), at(1))
    assert out.resets == reset
    assert out.rejected == (Reason.HASH,)
    assert w.log == ([0, 7, DROP] if reset else [0, 7])
    h.on_live(batch(2), at(1))  # ingest continues after that seq: no gap, no replay
    assert (h.last_seq, h.gaps) == (2, 0)
    assert h.state is (State.RESET if reset else State.LIVE)


def lost(seq: int) -> Batch:
    return lost_batch(DecodeError(Reason.NESTING, "too deep", seq))


def test_an_undecodable_live_message_drops_the_state_and_continues_after_its_seq() -> None:
    h, w = make()
    h.start(at(0))
    replay_all(h, 1, [0, 1])
    out = h.on_live(lost(2), at(1))
    assert (out.resets, out.replay, out.batches, out.lags) == (
        (ResetReason.UNDECODABLE,),
        None,
        0,
        [],
    )
    assert h.on_live(batch(3), at(1)).replay is None
    assert w.log == [0, 1, DROP, 3]
    assert (h.state, h.last_seq) == (State.RESET, 3)


def test_an_undecodable_message_in_a_replay_drops_the_state_in_stream_order() -> None:
    h, w = make()
    ticket = live_then_gap(h, 1, 5)
    h.on_replay(ticket, batch(2), at(1))
    assert h.on_replay(ticket, lost(3), at(1)).resets == (ResetReason.UNDECODABLE,)
    end = replay_all(h, ticket, [4, 5])
    assert (end.resets, end.duplicates) == ((), 1)
    assert w.log == [0, 1, 2, DROP, 4, 5]


def test_a_garbled_live_message_drops_the_state_at_once_or_after_the_replay() -> None:
    h, w = make(has_replay=False)
    h.on_live(batch(0), at(1))
    assert h.on_garbled(at(1)).resets == (ResetReason.UNDECODABLE,)
    h.on_live(batch(1), at(1))  # no seq to place it: the stream goes on from the last one
    assert (w.log, h.gaps) == ([0, DROP, 1], 0)

    h, w = make()
    h.start(at(0))
    h.on_live(batch(3), at(0))
    assert h.on_garbled(at(0)).resets == ()  # during a replay: once it is applied
    h.on_live(batch(4), at(0))
    end = replay_all(h, 1, [0, 1, 2, 3])
    assert end.resets == (ResetReason.UNDECODABLE,)
    assert w.log == [0, 1, 2, 3, 4, DROP]


# -- replay deadline: idle timeout, overall cap growing with progress ---------------------------


def test_a_replay_that_keeps_streaming_outlives_the_idle_timeout() -> None:
    h, w = make(timeout=5.0)
    h.start(at(0))
    for seq in range(200):  # a long warm start: one reply every 40 ms, 8 s in all
        assert h.on_tick(at(0.04 * seq + 0.039)) is None
        h.on_replay(1, batch(seq), at(0.04 * seq + 0.04))
    deadline = h.replay_deadline
    assert deadline is not None
    assert deadline == pytest.approx(8.0 + 5.0)  # idle: 5 s after the last reply
    assert h.on_tick(at(deadline - 0.01)) is None
    out = h.on_tick(at(deadline))
    assert out is not None
    assert out.replays == (ReplayResult.FAILED,)
    assert w.log == list(range(200))


def test_the_overall_replay_cap_grows_with_the_batches_delivered() -> None:
    h, _ = make(timeout=5.0)
    h.start(at(0))
    per_batch = h.settings.replay_cap_per_batch_s
    t = 0.0
    for seq in range(10):  # a trickle: never 5 s idle, but slower than the cap allows
        t += 4.0
        h.on_replay(1, batch(seq), at(t))
        assert h.replay_deadline == pytest.approx(min(t + 5.0, 5.0 + (seq + 1) * per_batch))
    assert h.on_tick(at(t)) is not None  # the cap ended it


# -- resuming from a shared index's stored seq ----------------------------------------------------


def test_a_resumed_endpoint_asks_only_for_what_follows_the_stored_seq() -> None:
    h, w = make()
    warm = h.start(at(0), resumed=41).replay
    assert warm == ReplayRequest(start=42, ticket=1)
    assert h.last_seq == 41
    replay_all(h, 1, [42, 43])
    assert (h.state, h.resets, w.log) == (State.LIVE, 0, [42, 43])
    assert h.on_live(batch(44), at(2)).replay is None
    assert w.log == [42, 43, 44]


def test_a_resumed_endpoint_whose_buffer_moved_on_is_a_hole() -> None:
    h, w = make()
    h.start(at(0), resumed=41)
    out = replay_all(h, 1, [50, 51])  # seqs 42..49 are gone from the publisher's buffer
    assert out.replays == (ReplayResult.HOLE,)
    assert w.log == [DROP, 50, 51]
    assert (h.state, h.resets, h.reset_reasons) == (State.RESET, 1, {"hole": 1})


def test_a_resumed_endpoint_whose_publisher_restarted_too_is_a_restart() -> None:
    h, w = make()
    h.start(at(0), resumed=41)
    replay_all(h, 1, [])  # the new publisher's buffer holds seqs 0..3 only: nothing from 42
    out = h.on_live(batch(4), at(2))
    assert out.resets == (ResetReason.RESTART,)
    assert out.replay == ReplayRequest(start=0, ticket=2)
    replay_all(h, 2, [0, 1, 2, 3])
    assert (h.state, w.log) == (State.LIVE, [DROP, 0, 1, 2, 3, 4])


def test_a_resumed_endpoint_without_replay_continues_or_resets_on_the_first_live_seq() -> None:
    h, w = make(has_replay=False)
    assert h.start(at(0), resumed=41).replay is None
    h.on_live(batch(42), at(1))
    assert (h.state, w.log) == (State.LIVE, [42])
    h2, w2 = make(has_replay=False)
    h2.start(at(0), resumed=41)
    out = h2.on_live(batch(45), at(1))
    assert out.resets == (ResetReason.GAP,)
    assert w2.log == [DROP, 45]
