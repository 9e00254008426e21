"""Live ingest over real ZMQ on 127.0.0.1: simulated vLLM fleet → SubscriberManager → index.

Acceptance: after the stream settles, the index's answers for a battery of router queries equal
the simulator's ground truth (precision and recall 1.000), or, after an unrecoverable hole,
precision 1.000 with the reset counted.
"""

import dataclasses
import time

import pytest
import zmq

from kvsync.events import wire
from kvsync.model import Endpoint, EndpointId
from kvsync.sim import Engine, Era, Fleet, Malformed, Mix, PromptLibrary, Request, Workload
from kvsync.sim.eras import encode_batch
from tests.integration.ingest_harness import (
    Daemon,
    eventually,
    running_daemon,
    score,
    settle,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("index_backend")]


def subscribe_all(daemon: Daemon, fleet: Fleet) -> None:
    for endpoint in fleet.endpoints():
        daemon.manager.set_endpoint(endpoint)
    fleet.wait_for_subscribers()


def submit(fleet: Fleet, endpoint: EndpointId, requests: int, seed: int = 0) -> None:
    """Traffic to one endpoint only (``Fleet.step`` spreads it at random)."""
    workload = Workload(PromptLibrary(Mix(), seed), seed=seed)
    for _ in range(requests):
        fleet.submit(endpoint, workload.next_request())


def assert_exact(daemon: Daemon, fleet: Fleet) -> None:
    result = score(daemon, fleet)
    assert result.hits > 0  # the battery does exercise held prefixes
    assert (result.precision, result.recall) == (1.0, 1.0)


def test_steady_state_matches_ground_truth() -> None:
    topic = "kv@{pod}@{model}"  # the llm-d convention: each SUB filters on its pod's prefix
    with running_daemon() as daemon, Fleet(pods=3, dp_sizes=(1, 2), topic=topic, seed=1) as fleet:
        assert all(e.topic.startswith("kv@sim/vllm-") for e in fleet.endpoints())
        subscribe_all(daemon, fleet)
        fleet.step(150)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        stats = daemon.manager.snapshot()
        assert stats.gaps == 0
        assert stats.resets == {}
        assert stats.batches == sum(fleet.publisher(e).stats.sent for e in fleet.ids)
        assert {e.state for e in stats.endpoints} == {"live"}
        blocks = {e.endpoint.id: e.blocks for e in stats.endpoints}
        assert blocks == {e: daemon.backend.blocks_held(e) for e in fleet.ids}


def test_gap_is_recovered_by_replay() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), seed=2) as fleet:
        subscribe_all(daemon, fleet)
        fleet.step(20)
        # live first: frames dropped during the warm-start replay would be covered by it (no gap)
        settle(daemon, fleet)
        victim = fleet.ids[0]
        fleet.publisher(victim).drop_next(5)  # seqs consumed, kept for replay, never sent live
        submit(fleet, victim, 30)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        stats = daemon.manager.snapshot()
        assert stats.gaps >= 1
        assert stats.replays.get("ok", 0) >= 1
        assert stats.resets == {}


def test_hole_beyond_the_replay_buffer_keeps_precision_and_counts_the_reset() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), seed=3) as fleet:
        subscribe_all(daemon, fleet)
        fleet.step(20)
        settle(daemon, fleet)  # live first, as in the gap test above
        victim = fleet.ids[0]
        publisher = fleet.publisher(victim)
        publisher.set_replay_capacity(2)
        publisher.drop_next(6)
        submit(fleet, victim, 30)
        settle(daemon, fleet)
        result = score(daemon, fleet)
        assert result.precision == 1.0
        stats = daemon.manager.snapshot()
        assert stats.resets.get("hole", 0) == 1
        assert daemon.endpoint(victim) is not None
        assert daemon.endpoint(victim).state == "reset"  # type: ignore[union-attr]


def test_engine_restart_drops_the_old_blocks_and_replays_the_new_stream() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), seed=4) as fleet:
        subscribe_all(daemon, fleet)
        fleet.step(40)
        settle(daemon, fleet)
        victim = fleet.ids[0]
        fleet.restart(victim.pod)
        submit(fleet, victim, 5)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        assert daemon.manager.snapshot().resets.get("restart", 0) == 1


def test_without_replay_address_a_gap_drops_state_and_stays_precise() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), replay=False, seed=5) as fleet:
        assert all(e.replay is None for e in fleet.endpoints())
        subscribe_all(daemon, fleet)
        fleet.step(30)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        victim = fleet.ids[0]
        fleet.publisher(victim).drop_next(3)
        submit(fleet, victim, 10)
        settle(daemon, fleet)
        assert score(daemon, fleet).precision == 1.0
        stats = daemon.manager.snapshot()
        assert stats.resets == {"gap": 1}
        assert stats.replays == {}


def test_warm_start_after_the_publisher_has_published() -> None:
    # Both replay reply layouts (the topic frame came in vLLM 0.26). Not 0.10.1: its LoRA blocks
    # carry only lora_id, and the simulator's ground truth answers lora_name queries for them.
    every_era = (Era.V0_17, Era.V0_23, Era.V0_25, Era.V0_33)
    with (
        running_daemon() as daemon,
        Fleet(pods=5, dp_sizes=(1, 2), eras=every_era, seed=6) as fleet,
    ):
        fleet.step(120)
        fleet.flush()
        subscribe_all(daemon, fleet)  # history comes from the replay buffers
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        fleet.step(30)  # and live traffic continues seamlessly
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        assert daemon.manager.snapshot().resets == {}


def test_malformed_frames_are_counted_and_skipped() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), seed=7) as fleet:
        subscribe_all(daemon, fleet)
        victim = fleet.ids[0]
        publisher = fleet.publisher(victim)
        for kind in (Malformed.FRAMES, Malformed.SEQ, Malformed.PAYLOAD):
            submit(fleet, victim, 1, seed=len(kind))
            publisher.send_malformed(kind)
        publisher.send_raw([b"only one frame"])
        fleet.step(30)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        stats = daemon.manager.snapshot()
        assert stats.decode_errors == {"frames": 2, "seq": 1, "payload": 1}
        assert daemon.endpoint(victim).decode_errors == 4  # type: ignore[union-attr]
        assert stats.gaps == 0


def test_a_bad_event_inside_a_batch_is_rejected_alone() -> None:
    with running_daemon() as daemon, Fleet(pods=1, dp_sizes=(1,), seed=8) as fleet:
        subscribe_all(daemon, fleet)
        victim = fleet.ids[0]
        fleet.step(10)
        fleet.publisher(victim).send_malformed(Malformed.EVENT, [])
        fleet.step(10)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        assert daemon.manager.snapshot().rejected_events == {"tokens": 1}


def test_address_change_purges_and_follows_the_new_publisher() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), seed=9) as fleet:
        first, second = fleet.endpoints()
        moving = EndpointId("default/moving", 0)
        daemon.manager.set_endpoint(dataclasses.replace(first, id=moving))
        fleet.publisher(first.id).wait_for_subscriber()
        fleet.step(60)
        fleet.flush()
        eventually(
            lambda: _last_seq(daemon, moving) == fleet.publisher(first.id).stats.next_seq - 1
        )
        result = score(daemon, fleet, remap=lambda e: moving if e == first.id else None)
        assert (result.precision, result.recall) == (1.0, 1.0)

        daemon.manager.set_endpoint(dataclasses.replace(second, id=moving))
        fleet.publisher(second.id).wait_for_subscriber()
        fleet.step(20)
        fleet.flush()
        eventually(
            lambda: _last_seq(daemon, moving) == fleet.publisher(second.id).stats.next_seq - 1
        )
        result = score(daemon, fleet, remap=lambda e: moving if e == second.id else None)
        assert (result.precision, result.recall) == (1.0, 1.0)
        assert daemon.endpoint(moving).endpoint.pub == second.pub  # type: ignore[union-attr]


def _last_seq(daemon: Daemon, endpoint_id: EndpointId) -> int | None:
    stats = daemon.endpoint(endpoint_id)
    return None if stats is None or stats.state != "live" else stats.last_seq


def test_an_identical_description_is_a_no_op() -> None:
    with running_daemon() as daemon, Fleet(pods=1, dp_sizes=(1,), seed=10) as fleet:
        subscribe_all(daemon, fleet)
        fleet.step(20)
        settle(daemon, fleet)
        before = daemon.manager.snapshot()
        daemon.manager.set_endpoint(fleet.endpoints()[0])
        fleet.step(5)
        settle(daemon, fleet)
        after = daemon.manager.snapshot()
        assert after.endpoints[0].replays == before.endpoints[0].replays  # not resubscribed
        assert_exact(daemon, fleet)


def test_removed_endpoint_is_purged() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,), seed=11) as fleet:
        subscribe_all(daemon, fleet)
        fleet.step(40)
        settle(daemon, fleet)
        gone, kept = fleet.ids
        assert daemon.backend.blocks_held(gone) > 0
        daemon.manager.remove_endpoint(gone)
        eventually(lambda: daemon.endpoint(gone) is None)
        assert daemon.backend.blocks_held(gone) == 0
        fleet.step(20)
        settle(daemon, fleet, [kept])
        result = score(daemon, fleet, remap=lambda e: e if e == kept else None)
        assert (result.precision, result.recall) == (1.0, 1.0)
        for _ in range(50):
            assert gone not in daemon.answer(fleet.sample_query())


def test_ipv6_loopback_endpoint() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.IPV6, 1)
    xpub.setsockopt(zmq.LINGER, 0)
    try:
        port = xpub.bind_to_random_port("tcp://[::1]")
        endpoint = Endpoint(EndpointId("v6/pod", 0), "m", f"tcp://[::1]:{port}")
        with running_daemon() as daemon:
            daemon.manager.set_endpoint(endpoint)
            assert xpub.poll(5000), "no subscription reached the IPv6 publisher"
            assert xpub.recv()[:1] == b"\x01"
            events = Engine(num_blocks=64).run(Request(prompt=tuple(range(64))))
            era = Era.V0_33
            payload = encode_batch(
                era, events, ts=time.time(), dp_rank=0, hashes=era.default_hashes
            )
            xpub.send_multipart([b"", wire.encode_seq(0), payload])
            eventually(lambda: daemon.backend.blocks_held(endpoint.id) == 4)
    finally:
        xpub.close(linger=0)
        ctx.term()


def test_stop_closes_every_socket_within_a_second() -> None:
    with running_daemon() as daemon, Fleet(pods=20, dp_sizes=(1,), seed=12) as fleet:
        subscribe_all(daemon, fleet)
        fleet.step(20)
        fleet.flush()
        assert daemon.manager.stop(timeout_s=1.0)  # False if the thread outlived the second
        assert daemon.manager.closed
        assert not daemon.manager.failed.is_set()


def test_two_hundred_endpoints_on_one_manager_converge() -> None:
    with (
        running_daemon() as daemon,
        Fleet(pods=200, dp_sizes=(1,), num_blocks=256, seed=13) as fleet,
    ):
        subscribe_all(daemon, fleet)
        fleet.step(600)
        settle(daemon, fleet)
        assert_exact(daemon, fleet)
        stats = daemon.manager.snapshot()
        assert len(stats.endpoints) == 200
        published = sum(1 for e in fleet.ids if fleet.publisher(e).stats.next_seq)
        idle = 200 - published  # no request reached them: nothing to apply yet
        expected = {"live": published, "connecting": idle}
        assert stats.endpoints_by_state() == {k: v for k, v in expected.items() if v}
        assert stats.gaps == 0
