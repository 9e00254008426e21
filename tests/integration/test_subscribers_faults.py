"""Ingest faults on real sockets: replays that never answer, a dying thread, noisy publishers."""

import dataclasses
import time
from collections.abc import Iterator, Sequence

import msgspec
import pytest
import zmq
from structlog.testing import capture_logs

from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import ApplyOutcome, EndpointContext, Limits
from kvsync.model import BlockStored, EndpointId, Event, encode_tokens
from kvsync.sim import Fleet, Malformed, Request, SimQuery
from tests.integration.ingest_harness import eventually, running_daemon, score, settle

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("index_backend")]


@pytest.fixture
def silent_router() -> Iterator["zmq.Socket[bytes]"]:
    """A replay ROUTER that receives requests and never answers them."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind_to_random_port("tcp://127.0.0.1")
    yield router
    router.close(linger=0)
    ctx.term()


def _address(sock: "zmq.Socket[bytes]") -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def test_a_replay_that_never_answers_does_not_stall_other_endpoints(
    silent_router: "zmq.Socket[bytes]",
) -> None:
    with running_daemon(replay_timeout_s=60.0) as daemon, Fleet(pods=2, dp_sizes=(1,)) as fleet:
        stuck, other = fleet.endpoints()
        daemon.manager.set_endpoint(dataclasses.replace(stuck, replay=_address(silent_router)))
        daemon.manager.set_endpoint(other)
        assert silent_router.poll(5000)
        # vLLM's protocol, as a DEALER sends it: [identity, b"", start seq 0 (8 bytes BE)].
        assert silent_router.recv_multipart()[1:] == [b"", bytes(8)]
        fleet.wait_for_subscribers()
        fleet.step(40)
        settle(daemon, fleet, [other.id])  # converges while the other replay is pending
        state = daemon.endpoint(stuck.id)
        assert state is not None
        assert state.state == "replaying"
        assert daemon.manager.snapshot().replays == {"ok": 1}


def test_replay_deadline_fails_applies_held_batches_and_cools_down(
    silent_router: "zmq.Socket[bytes]",
) -> None:
    with (
        running_daemon(replay_timeout_s=0.5, replay_cooldown_s=600.0) as daemon,
        Fleet(pods=1, dp_sizes=(1,), seed=3) as fleet,
    ):
        (endpoint,) = fleet.endpoints()
        daemon.manager.set_endpoint(dataclasses.replace(endpoint, replay=_address(silent_router)))
        fleet.wait_for_subscribers()
        fleet.step(20)  # held while the warm-start replay waits, applied when it fails
        settle(daemon, fleet)
        assert (score(daemon, fleet).precision, score(daemon, fleet).recall) == (1.0, 1.0)
        fleet.publisher(endpoint.id).drop_next(2)
        fleet.step(10)
        settle(daemon, fleet)  # cooling down: the gap is handled without a replay
        assert score(daemon, fleet).precision == 1.0
        stats = daemon.manager.snapshot()
        assert stats.replays == {"failed": 1}
        assert stats.resets == {"gap": 1}
        assert silent_router.poll(0)  # one request: the warm start's
        silent_router.recv_multipart()
        assert not silent_router.poll(0)


class BrokenIndex(PrefixIndex):
    """An index bug that one message triggers: the loop must survive it (no input ends it)."""

    def apply(
        self, endpoint: EndpointId, context: EndpointContext, events: Sequence[Event], now: float
    ) -> ApplyOutcome:
        raise RuntimeError("index bug")


class BrokenDrop(BrokenIndex):
    """A bug outside any one message's handling: dropping an endpoint fails too."""

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        raise RuntimeError("index bug")


@pytest.mark.memory_only  # an index of its own
def test_a_message_that_makes_kvsync_fail_is_counted_and_the_loop_goes_on() -> None:
    with (
        capture_logs() as logs,
        running_daemon(index=BrokenIndex()) as daemon,
        Fleet(pods=1, dp_sizes=(1,), replay=False) as fleet,
    ):
        daemon.manager.set_endpoint(fleet.endpoints()[0])
        fleet.wait_for_subscribers()
        fleet.step(3)
        eventually(
            lambda: daemon.manager.snapshot().decode_errors.get("internal", 0) == 3,
            what="each failed message counted",
        )
        stats = daemon.manager.snapshot()
        assert stats.resets == {"undecodable": 3}
        assert not daemon.manager.failed.is_set()
    failures = [e for e in logs if e["event"] == "message_failed"]
    assert len(failures) == 1  # rate-limited, with the stack
    assert failures[0]["log_level"] == "error"


@pytest.mark.memory_only  # an index of its own
def test_an_unexpected_error_ends_the_thread_reported_once_and_closed() -> None:
    with (
        capture_logs() as logs,
        running_daemon(index=BrokenDrop(), expect_failure=True) as daemon,
        Fleet(pods=1, dp_sizes=(1,), replay=False) as fleet,
    ):
        daemon.manager.set_endpoint(fleet.endpoints()[0])
        fleet.wait_for_subscribers()
        fleet.step(3)
        eventually(daemon.manager.failed.is_set, what="the ingest thread reported its failure")
        eventually(lambda: daemon.manager.closed, what="sockets closed after the failure")
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["message_failed", "ingest_failed"]


def test_decode_errors_are_logged_once_per_interval_and_all_counted() -> None:
    with capture_logs() as logs, running_daemon() as daemon, Fleet(pods=1, dp_sizes=(1,)) as fleet:
        (endpoint,) = fleet.endpoints()
        daemon.manager.set_endpoint(endpoint)
        fleet.wait_for_subscribers()
        for _ in range(50):
            fleet.publisher(endpoint.id).send_malformed(Malformed.PAYLOAD)
        fleet.step(5)
        settle(daemon, fleet)
        assert daemon.manager.snapshot().decode_errors == {"payload": 50}
    decode_logs = [e for e in logs if e["event"] == "decode_error"]
    assert len(decode_logs) == 1
    assert decode_logs[0]["reason"] == "payload"


def test_lag_hook_gets_one_sample_per_live_batch() -> None:
    lags: list[float] = []
    fleet = Fleet(pods=2, dp_sizes=(1,), replay=False)  # replayed batches report no lag
    with running_daemon(on_lag=lags.append) as daemon, fleet:
        for endpoint in fleet.endpoints():
            daemon.manager.set_endpoint(endpoint)
        fleet.wait_for_subscribers()
        fleet.step(30)
        settle(daemon, fleet)
        assert len(lags) == daemon.manager.snapshot().batches
        assert all(lag >= 0 for lag in lags)  # same clock: applied after it was published
        for endpoint_id in fleet.ids:
            age = daemon.manager.last_event_age(endpoint_id)
            assert age is not None
            assert age >= 0
        assert daemon.manager.last_event_age(EndpointId("nobody", 0)) is None


def test_an_address_libzmq_refuses_is_counted_and_the_rest_keep_working() -> None:
    with capture_logs() as logs, running_daemon() as daemon, Fleet(pods=1, dp_sizes=(1,)) as fleet:
        (good,) = fleet.endpoints()
        bad = dataclasses.replace(good, id=EndpointId("bad/pod", 0), pub="tcp://no port here")
        daemon.manager.set_endpoint(bad)
        daemon.manager.set_endpoint(good)
        fleet.wait_for_subscribers()
        fleet.step(10)
        settle(daemon, fleet)
        stats = daemon.manager.snapshot()
        assert stats.invalid_endpoints == 1
        assert [e.endpoint.id for e in stats.endpoints] == [good.id]
    assert [e["pub"] for e in logs if e["event"] == "endpoint_invalid"] == [bad.pub]


@pytest.mark.memory_only  # an index of its own
def test_the_ingest_thread_sweeps_idle_contexts() -> None:
    index = PrefixIndex(Limits(idle_ttl_seconds=30.0))
    quiet = EndpointId("quiet/pod", 0)
    with running_daemon(index=index, sweep_interval_s=0.05) as daemon:
        assert daemon.lock is not None
        with daemon.lock:  # a context last used a minute ago, and no traffic since
            stored = BlockStored([1, 2], None, encode_tokens(range(8)), 4)
            index.apply(quiet, EndpointContext("m"), [stored], time.time() - 60.0)
        eventually(lambda: index.blocks_held(quiet) == 0, what="idle context swept")
    assert index.evictions == {"idle_ttl": 2}


def _poison() -> msgspec.Raw:
    """A BlockStored with 5,000 levels of nesting in an unknown key: about 5 KB that made
    msgspec raise RecursionError, which used to end the ingest thread (and, being in the pod's
    replay buffer, the next daemon's warm start too)."""
    deep = msgspec.Raw(b"\x91" * 5_000 + b"\x00")
    return msgspec.Raw(msgspec.msgpack.encode({"type": "BlockStored", "future": deep}))


def test_a_poison_frame_over_a_live_sub_is_counted_and_the_pod_recovers() -> None:
    with running_daemon() as daemon, Fleet(pods=2, dp_sizes=(1,)) as fleet:
        poisoned, other = fleet.ids
        for endpoint in fleet.endpoints():
            daemon.manager.set_endpoint(endpoint)
        fleet.wait_for_subscribers()
        fleet.step(20)
        settle(daemon, fleet)
        fleet.publisher(poisoned).publish([_poison()])  # a real batch: it takes a seq
        fleet.step(20)
        settle(daemon, fleet)
        stats = daemon.manager.snapshot()
        assert stats.decode_errors == {"nesting": 1}
        # It may have held removals: the pod's state was dropped, in stream order, and ingest
        # went on from the next seq (no replay of a frame that would fail again).
        assert stats.resets == {"undecodable": 1}
        assert not daemon.manager.failed.is_set()
        assert score(daemon, fleet).precision == 1.0
        # A prompt nobody sent before, stored after the storm: indexed, and matched exactly.
        prompt = tuple(range(900_000, 900_000 + 4 * fleet.block_size))
        assert fleet.submit(poisoned, Request(prompt))
        settle(daemon, fleet)
        query = SimQuery(fleet.model, prompt)
        assert daemon.answer(query) == fleet.ground_truth(query) == {poisoned: 4}
        # The well-behaved endpoint never lost anything.
        for _ in range(150):
            query = fleet.sample_query()
            assert daemon.answer(query).get(other) == fleet.ground_truth(query).get(other)
    # A daemon started afresh replays the buffer that holds the poison frame: it survives too.
    with running_daemon() as daemon, Fleet(pods=1, dp_sizes=(1,)) as fleet:
        (endpoint,) = fleet.endpoints()
        fleet.publisher(endpoint.id).publish([_poison()])
        fleet.step(5)
        fleet.flush()  # sent before the daemon subscribes: it meets the poison in the replay only
        daemon.manager.set_endpoint(endpoint)
        settle(daemon, fleet)
        assert daemon.manager.snapshot().decode_errors == {"nesting": 1}
        assert score(daemon, fleet).precision == 1.0
