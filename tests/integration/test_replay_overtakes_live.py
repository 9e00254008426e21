"""A replay reply that overtakes the live copies of the same seqs is not an engine restart.

The SUB and the DEALER are separate TCP connections, so under a backlog on the live path the
replay can deliver seqs the SUB socket has not delivered yet (the design's §4, "Restart versus
duplicate"). Here a proxy between the publisher's XPUB and the daemon's SUB holds every live
message ``LIVE_DELAY_S`` before forwarding it, while the replay DEALER talks to the publisher
directly: after a gap, every batch the replay returns beyond the gap reaches the daemon live a
second time, later. The replay buffer is small and already past seq 0, so mistaking those copies
for a restart (drop the endpoint, replay from 0) cannot be repaired: the answers lose blocks.
"""

import dataclasses
import heapq
import itertools
import math
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from kvsync.sim import Fleet
from tests.integration.ingest_harness import eventually, running_daemon, score, settle

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(40),
    pytest.mark.usefixtures("index_backend"),
]

LIVE_DELAY_S = 0.4
REPLAY_CAPACITY = 64  # batches; covers the ~0.4 s of traffic a gap replay must return
WARM_BATCHES = 150  # more than the buffer holds: it no longer reaches seq 0
RATE = 50.0  # requests (= batches) per second while the gap happens
AFTER_GAP = 60  # batches published after the gap: well past the 0.4 s the live path lags


class DelayingProxy:
    """XSUB (to the publisher) → a timed queue → XPUB (for the daemon); one thread owns all.

    Each live message is forwarded ``delay_s`` after it arrived, in arrival order: the release
    time is a deadline in the queue, and the thread's poll timeout is the time to the next one,
    so nothing sleeps. Subscriptions travel upstream at once, so the publisher's XPUB sees the
    daemon's subscription only through the proxy: ``Fleet.wait_for_subscribers`` then means the
    whole path is connected.
    """

    def __init__(self, ctx: "zmq.Context[zmq.Socket[bytes]]", upstream: str, delay_s: float):
        self.delay_s = delay_s
        self.forwarded = 0
        self._ctx = ctx
        self._upstream = upstream
        self._xpub = ctx.socket(zmq.XPUB)
        self._xpub.setsockopt(zmq.LINGER, 0)
        self._xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
        port = self._xpub.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        control = f"inproc://delaying-proxy-{id(self)}"
        self._control = ctx.socket(zmq.PAIR)  # the owner's side: only close() uses it
        self._control.setsockopt(zmq.LINGER, 0)
        self._control.bind(control)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._guarded, args=(control,), name="proxy")
        self._thread.start()

    def close(self) -> None:
        self._control.send(b"stop")
        self._thread.join(5.0)
        assert not self._thread.is_alive(), "proxy thread did not stop"
        self._control.close()
        if self._failure is not None:
            raise AssertionError("proxy thread failed") from self._failure

    def _guarded(self, control: str) -> None:
        try:
            self._run(control)
        except Exception as exc:  # noqa: BLE001  # re-raised by close() in the test's thread
            self._failure = exc
        finally:
            self._xpub.close(linger=0)

    def _run(self, control: str) -> None:
        stop = self._ctx.socket(zmq.PAIR)
        xsub = self._ctx.socket(zmq.XSUB)
        try:
            stop.setsockopt(zmq.LINGER, 0)
            stop.connect(control)
            xsub.setsockopt(zmq.LINGER, 0)
            xsub.connect(self._upstream)
            poller = zmq.Poller()
            for sock in (stop, xsub, self._xpub):
                poller.register(sock, zmq.POLLIN)
            queue: list[tuple[float, int, list[bytes]]] = []  # (release at, arrival no., frames)
            arrivals = itertools.count()
            while True:
                now = time.monotonic()
                while queue and queue[0][0] <= now:
                    self._xpub.send_multipart(heapq.heappop(queue)[2])
                    self.forwarded += 1
                # Rounded up: waking a fraction of a millisecond early would only spin.
                timeout = None if not queue else max(0, math.ceil((queue[0][0] - now) * 1000))
                ready = dict(poller.poll(timeout))
                if stop in ready:
                    return
                if self._xpub in ready:  # (un)subscriptions: upstream without delay
                    xsub.send_multipart(self._xpub.recv_multipart())
                while xsub in ready and xsub.poll(0):
                    frames = xsub.recv_multipart()
                    release = time.monotonic() + self.delay_s
                    heapq.heappush(queue, (release, next(arrivals), frames))
        finally:
            xsub.close(linger=0)
            stop.close(linger=0)


@pytest.fixture
def zmq_ctx() -> Iterator["zmq.Context[zmq.Socket[bytes]]"]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


def test_live_copies_of_replayed_seqs_are_duplicates_not_a_restart(
    zmq_ctx: "zmq.Context[zmq.Socket[bytes]]",
) -> None:
    fleet = Fleet(pods=1, dp_sizes=(1,), replay_capacity=REPLAY_CAPACITY, seed=5)
    with running_daemon() as daemon, fleet:
        (endpoint,) = fleet.endpoints()
        publisher = fleet.publisher(endpoint.id)
        proxy = DelayingProxy(zmq_ctx, endpoint.pub, LIVE_DELAY_S)
        try:
            daemon.manager.set_endpoint(dataclasses.replace(endpoint, pub=proxy.address))
            fleet.wait_for_subscribers()
            # Warm start over: the replay from 0 of an empty buffer ends before anything is
            # published, so the live stream starts at seq 0 and nothing is missing.
            eventually(
                lambda: daemon.manager.snapshot().replays.get("ok", 0) == 1,
                what="warm-start replay finished",
            )
            fleet.step(WARM_BATCHES)
            settle(daemon, fleet)
            assert publisher.stats.buffered == REPLAY_CAPACITY  # seq 0 is gone from the buffer

            # Traffic at a steady rate, so that batches keep being published while the delayed
            # live path reports the gap: the replay (direct) returns them ~0.4 s before their
            # live copies arrive.
            fleet.start(requests_per_s=RATE)
            gap_at = publisher.stats.next_seq
            publisher.drop_next(2)  # replayable: the buffer still holds them
            eventually(
                lambda: publisher.stats.next_seq >= gap_at + AFTER_GAP,
                what="traffic past the gap",
            )
            fleet.stop()
            settle(daemon, fleet)
            accuracy = score(daemon, fleet, queries=200)
            stats = daemon.manager.snapshot()
            state = daemon.endpoint(endpoint.id)
            assert state is not None
            observed = {
                "precision": accuracy.precision,
                "recall": accuracy.recall,
                "endpoint_resets": state.resets,
                "resets": dict(stats.resets),
                "state": state.state,
                "gaps": stats.gaps,
            }
            assert observed == {
                "precision": 1.0,
                "recall": 1.0,
                "endpoint_resets": 0,
                "resets": {},
                "state": "live",
                "gaps": 1,
            }
            assert accuracy.hits > 0  # the queries did ask about cached prefixes
            # The scenario happened: the replay did deliver seqs whose live copies came later
            # (or were held), and they were skipped as duplicates.
            assert stats.duplicates > 0
            assert stats.replays == {"ok": 2}
            assert proxy.forwarded == publisher.stats.sent  # every live message took the slow path
        finally:
            fleet.stop()
            proxy.close()
