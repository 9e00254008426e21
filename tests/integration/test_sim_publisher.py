"""The simulated publisher and fleet on real ZMQ sockets (127.0.0.1), as a subscriber sees them."""

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from kvsync import model
from kvsync.errors import DecodeError, Reason
from kvsync.events import wire
from kvsync.events.decode import decode_live, decode_replay
from kvsync.model import EndpointId, ReplayEnd
from kvsync.sim import (
    AddressInUseError,
    Era,
    Fleet,
    Malformed,
    Publisher,
    Request,
    SimError,
    SimQuery,
)
from tests import golden
from tests.unit.test_sim_engine import EventReplica
from tests.unit.test_sim_eras import CAPTURES, captured_ts, era_of, scenario_events

pytestmark = pytest.mark.integration

Context = zmq.Context[zmq.Socket[bytes]]
Socket = zmq.Socket[bytes]
CLEARED: list[model.Event] = [model.AllBlocksCleared()]


@pytest.fixture
def ctx() -> Iterator[Context]:
    context: Context = zmq.Context()
    yield context
    context.destroy(linger=0)


def subscribe(ctx: Context, publisher: Publisher) -> Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(publisher.pub_address)
    sub.subscribe(b"")
    publisher.wait_for_subscriber(5.0)
    return sub


def receive(sock: Socket, timeout: float = 5.0) -> list[bytes]:
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError("no message within the deadline")
    return sock.recv_multipart()


def replay(
    ctx: Context, address: str | None, start: int, *, raw: bool = False
) -> list[list[bytes]]:
    """Every reply message up to and including the end marker, over a fresh DEALER."""
    assert address is not None
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    dealer.send_multipart([b"", wire.encode_seq(start)])
    replies = []
    try:
        while True:
            replies.append(receive(dealer))
            if replies[-1][-2] == wire.END_SEQ and not raw:
                return replies
    finally:
        dealer.close()


def seqs(replies: list[list[bytes]]) -> list[int]:
    return [int.from_bytes(r[-2], "big") for r in replies if r[-2] != wire.END_SEQ]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_golden_scenario_frames_equal_the_vllm_capture(
    ctx: Context, capture: golden.Capture
) -> None:
    era, hashes = era_of(capture)
    rank = capture.expected[0]["data_parallel_rank"]
    with Publisher(
        era=era, hashes=hashes, topic=capture.doc["topic"], dp_rank=rank, block_size=4, ctx=ctx
    ) as publisher:
        sub = subscribe(ctx, publisher)
        for frames, events in zip(capture.live, scenario_events(capture), strict=True):
            publisher.publish(events, ts=captured_ts(frames[2]))
            mine = receive(sub)
            assert mine == frames  # byte-identical, the timestamp being the captured one
            assert decode_live(mine) == decode_live(frames)
        publisher.publish(scenario_events(capture)[0])  # the clock's timestamp this time
        fresh, original = receive(sub), capture.live[0]
        assert fresh[2][:2] + fresh[2][10:] == original[2][:2] + original[2][10:]
        assert capture.replay_request == [b"", wire.encode_seq(2)]
        replies = replay(ctx, publisher.replay_address, 2)
        assert replies[:-2] == capture.replay_reply[:-1][:6]  # seq 2..7, byte for byte
        assert seqs(replies) == [2, 3, 4, 5, 6, 7, 8]
        assert replies[-1] == capture.replay_reply[-1]  # the end marker
        sub.close()


@pytest.mark.parametrize("era", list(Era))
def test_replay_layout_hole_and_future_seq(ctx: Context, era: Era) -> None:
    with Publisher(era=era, topic="kv@p@m", ctx=ctx) as publisher:
        for _ in range(5):
            publisher.publish(CLEARED)
        publisher.flush()
        full = replay(ctx, publisher.replay_address, 0)
        assert seqs(full) == [0, 1, 2, 3, 4]
        frame_count = 4 if era is Era.V0_33 else 3  # vLLM >= 0.26 adds the topic frame
        assert {len(reply) for reply in full} == {frame_count}
        assert all(isinstance(decode_replay(r), model.Batch) for r in full[:-1])
        assert isinstance(decode_replay(full[-1]), ReplayEnd)
        if era is Era.V0_33:
            assert full[0][1] == b"kv@p@m"
        publisher.set_replay_capacity(2)
        assert seqs(replay(ctx, publisher.replay_address, 0)) == [3, 4]  # a hole: 0..2 are gone
        future = replay(ctx, publisher.replay_address, 99)
        assert len(future) == 1
        assert isinstance(decode_replay(future[0]), ReplayEnd)
        publisher.publish(CLEARED)  # still served while the publisher keeps publishing
        assert seqs(replay(ctx, publisher.replay_address, 4)) == [4, 5]
        assert publisher.stats.replays == 4


def test_invalid_replay_request_gets_no_answer(ctx: Context) -> None:
    with Publisher(ctx=ctx) as publisher:
        publisher.publish(CLEARED)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        assert publisher.replay_address is not None
        dealer.connect(publisher.replay_address)
        dealer.send_multipart([wire.encode_seq(0)])  # no empty delimiter frame
        dealer.send_multipart([b"", wire.encode_seq(0)])
        first, second = receive(dealer), receive(dealer)
        assert seqs([first]) == [0]  # the answer to the valid request comes first
        assert second[-2] == wire.END_SEQ
        assert publisher.stats.bad_replay_requests == 1
        dealer.close()


@pytest.mark.parametrize("replayable", [True, False])
def test_dropped_message_is_a_gap_that_replay_fills_if_buffered(
    ctx: Context, *, replayable: bool
) -> None:
    with Publisher(ctx=ctx) as publisher:
        sub = subscribe(ctx, publisher)
        publisher.publish(CLEARED)
        publisher.drop_next(1, replayable=replayable)
        publisher.publish(CLEARED)
        publisher.publish(CLEARED)
        live = [decode_live(receive(sub)).seq for _ in range(2)]
        assert live == [0, 2]
        assert seqs(replay(ctx, publisher.replay_address, 1)) == ([1, 2] if replayable else [2])
        assert publisher.stats.dropped == 1
        sub.close()


def test_restart_starts_over_at_seq_zero_with_an_empty_buffer(ctx: Context) -> None:
    with Publisher(ctx=ctx) as publisher:
        sub = subscribe(ctx, publisher)
        for _ in range(3):
            publisher.publish(CLEARED)
        publisher.restart()
        publisher.publish(CLEARED)
        assert [decode_live(receive(sub)).seq for _ in range(4)] == [0, 1, 2, 0]
        assert seqs(replay(ctx, publisher.replay_address, 0)) == [0]
        sub.close()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (Malformed.FRAMES, Reason.FRAMES),
        (Malformed.SEQ, Reason.SEQ),
        (Malformed.PAYLOAD, Reason.PAYLOAD),
    ],
)
def test_malformed_frames_are_rejected_and_take_no_seq(
    ctx: Context, kind: Malformed, reason: Reason
) -> None:
    with Publisher(ctx=ctx) as publisher:
        sub = subscribe(ctx, publisher)
        publisher.send_malformed(kind)
        publisher.publish(CLEARED)
        with pytest.raises(DecodeError) as caught:
            decode_live(receive(sub))
        assert caught.value.reason is reason
        assert decode_live(receive(sub)).seq == 0
        assert publisher.stats.malformed == 1
        sub.close()


@pytest.mark.parametrize("era", list(Era))
def test_one_bad_event_among_good_ones(ctx: Context, era: Era) -> None:
    good = model.BlockRemoved([b"\x05" * 32], model.GPU, 0)
    with Publisher(era=era, ctx=ctx) as publisher:
        sub = subscribe(ctx, publisher)
        publisher.send_malformed(Malformed.EVENT, [good, good])
        batch = decode_live(receive(sub))
        assert batch.seq == 0
        assert len(batch.events) == 2
        assert [(r.position, r.reason) for r in batch.rejected] == [(1, Reason.TOKENS)]
        assert publisher.stats.malformed == 1
        sub.close()


def test_raw_frames_go_out_unchanged(ctx: Context) -> None:
    with Publisher(ctx=ctx) as publisher:
        sub = subscribe(ctx, publisher)
        publisher.send_raw([b"t", b"x", b"y", b"z"])
        assert receive(sub) == [b"t", b"x", b"y", b"z"]
        sub.close()


def test_plain_pub_socket(ctx: Context) -> None:
    with Publisher(xpub=False, replay_port=None, ctx=ctx) as publisher:
        assert publisher.replay_address is None
        with pytest.raises(SimError, match="XPUB"):
            publisher.wait_for_subscriber(0.1)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(publisher.pub_address)
        sub.subscribe(b"")
        deadline = time.monotonic() + 5.0  # no handshake on PUB: publish until one arrives
        while not sub.poll(20):
            assert time.monotonic() < deadline, "nothing received on the PUB socket"
            publisher.publish(CLEARED)
        events = decode_live(sub.recv_multipart()).events
        assert [type(e).__bases__ for e in events] == [(model.AllBlocksCleared,)]
        sub.close()


def test_close_is_prompt_and_leaves_no_thread(ctx: Context) -> None:
    publisher = Publisher(ctx=ctx)
    publisher.publish(CLEARED)
    publisher.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-publisher")]
    with pytest.raises(SimError, match="closed"):
        publisher.publish(CLEARED)
    publisher.close()  # idempotent


def test_taken_port_is_reported(ctx: Context) -> None:
    with Publisher(ctx=ctx) as first:
        port = int(first.pub_address.rsplit(":", 1)[1])
        with pytest.raises(AddressInUseError):
            Publisher(pub_port=port, ctx=ctx)


def _fleet_subscribers(ctx: Context, fleet: Fleet) -> dict[EndpointId, Socket]:
    subs = {}
    for endpoint in fleet.endpoints():
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(endpoint.pub)
        sub.subscribe(endpoint.topic.encode())
        subs[endpoint.id] = sub
    fleet.wait_for_subscribers()
    return subs


def test_fleet_dp_ranks_publish_on_base_plus_rank(ctx: Context) -> None:
    with Fleet(pods=2, dp_sizes=(2,), seed=3) as fleet:
        endpoints = {e.id: e for e in fleet.endpoints()}
        assert set(endpoints) == {EndpointId(f"sim/vllm-{p}", r) for p in (0, 1) for r in (0, 1)}
        for pod in ("sim/vllm-0", "sim/vllm-1"):
            rank0, rank1 = endpoints[EndpointId(pod, 0)], endpoints[EndpointId(pod, 1)]
            assert _port(rank1.pub) == _port(rank0.pub) + 1
            assert _port(rank1.replay) == _port(rank0.replay) + 1
        subs = _fleet_subscribers(ctx, fleet)
        second = EndpointId("sim/vllm-1", 1)
        fleet.submit(second, Request(tuple(range(40))))
        assert decode_live(receive(subs[second])).data_parallel_rank == 1
        assert fleet.endpoint_specs()[1].endswith(",dp_size=2")
        for sub in subs.values():
            sub.close()


def _port(address: str | None) -> int:
    assert address is not None
    return int(address.rsplit(":", 1)[1])


def test_fleet_stream_over_the_wire_implies_the_ground_truth(ctx: Context) -> None:
    eras = (Era.V0_33, Era.V0_25, Era.V0_23, Era.V0_17)
    with Fleet(pods=3, eras=eras, num_blocks=96, seed=5, topic="kv@{pod}@{model}") as fleet:
        subs = _fleet_subscribers(ctx, fleet)
        fleet.step(150)
        fleet.clear(fleet.ids[0])
        fleet.step(150)
        fleet.flush()
        replicas = {endpoint: EventReplica(fleet.block_size) for endpoint in fleet.ids}
        evicted = 0
        for endpoint, sub in subs.items():
            for expected_seq in range(fleet.publisher(endpoint).stats.sent):
                batch = decode_live(receive(sub))
                assert (batch.seq, batch.rejected) == (expected_seq, ())
                replicas[endpoint].apply(batch.events)
                evicted += sum(isinstance(e, model.BlockRemoved) for e in batch.events)
        assert evicted > 0  # the pools were under pressure
        hits = 0
        for _ in range(150):
            query = fleet.sample_query()
            truth = fleet.ground_truth(query)
            replayed = {e: r.matched_query(query) for e, r in replicas.items()}
            assert truth == {e: n for e, n in replayed.items() if n}
            hits += bool(truth)
        assert hits > 30
        for sub in subs.values():
            sub.close()


def test_fleet_is_deterministic_given_its_seed() -> None:
    def run(seed: int) -> tuple[list[int], list[SimQuery], list[dict[EndpointId, int]]]:
        with Fleet(pods=3, num_blocks=64, seed=seed) as fleet:
            stored = [fleet.step(5) for _ in range(30)]
            queries = [fleet.sample_query() for _ in range(30)]
            return stored, queries, [fleet.ground_truth(q) for q in queries]

    first = run(8)
    assert run(8) == first
    assert run(9) != first
    assert any(first[2])


def test_fleet_restart_forgets_and_starts_over(ctx: Context) -> None:
    with Fleet(pods=1, dp_sizes=(1,), seed=2) as fleet:
        endpoint = fleet.ids[0]
        sub = _fleet_subscribers(ctx, fleet)[endpoint]
        fleet.submit(endpoint, Request(tuple(range(64))))
        query = SimQuery(fleet.model, tuple(range(70)))
        assert fleet.ground_truth(query) == {endpoint: 4}
        fleet.restart(endpoint.pod)
        assert fleet.ground_truth(query) == {}
        fleet.submit(endpoint, Request(tuple(range(100, 132))))
        assert [decode_live(receive(sub)).seq for _ in range(2)] == [0, 0]
        sub.close()


def test_fleet_traffic_thread_runs_at_a_rate_and_stops(ctx: Context) -> None:
    with Fleet(pods=2, seed=4) as fleet:
        with pytest.raises(SimError, match="exactly one"):
            fleet.start(requests_per_s=10, blocks_per_s=10)
        fleet.start(requests_per_s=500)
        deadline = time.monotonic() + 10.0
        while sum(fleet.publisher(e).stats.sent for e in fleet.ids) < 20:
            assert time.monotonic() < deadline, "the traffic thread published nothing"
            time.sleep(0.01)
        fleet.stop()
        fleet.flush()
        sent = [fleet.publisher(e).stats.sent for e in fleet.ids]
        assert not [t for t in threading.enumerate() if t.name == "sim-fleet-traffic"]
        fleet.start(blocks_per_s=5000)
        fleet.stop()
        fleet.flush()
        assert [fleet.publisher(e).stats.sent for e in fleet.ids] >= sent
        fleet.start(requests_per_s=1000)  # close() stops a running traffic thread too
    assert not [t for t in threading.enumerate() if t.name.startswith("sim-")]


def test_fleet_fixed_base_port_layout() -> None:
    # Below Linux's ephemeral range (32768-60999): a busy machine's outgoing connections hold
    # ports in TIME_WAIT there, and a fixed bind on one fails however many bases are tried.
    for base in range(21_000, 22_000, 100):
        try:
            fleet = Fleet(pods=2, dp_sizes=(1, 2), base_port=base)
        except AddressInUseError:
            continue
        with fleet:
            pubs = [(e.id, _port(e.pub), _port(e.replay)) for e in fleet.endpoints()]
        assert pubs == [
            (EndpointId("sim/vllm-0", 0), base, base + 10),
            (EndpointId("sim/vllm-1", 0), base + 20, base + 30),
            (EndpointId("sim/vllm-1", 1), base + 21, base + 31),
        ]
        return
    pytest.fail("no free base port")
