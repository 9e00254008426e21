"""Whole daemons on the Redis backend, in front of one simulated fleet, on the real test cluster:
shards and a query-only replica answer exactly as one memory-backend daemon, and a writer killed
with SIGKILL mid-ingest comes back from its stored seqs (no replay from 0) to true answers."""

import threading
import time
from typing import Any

import httpx
import pytest

from kvsync.model import EndpointId
from kvsync.sim import Fleet
from tests.integration.daemons import matched_blocks, matches, pods, serving, wait_applied
from tests.integration.ingest_harness import eventually
from tests.integration.test_lifecycle import Daemon, serve
from tests.redis.nodes import RedisNodes

pytestmark = pytest.mark.integration


def redis_args(nodes: RedisNodes) -> list[str]:
    return ["--index-backend", "redis", "--redis-url", nodes.url]


def log_lines(daemon: Daemon, event: str, count: int) -> list[dict[str, Any]]:
    """The daemon's first ``count`` log lines of ``event`` (reading its stdout up to 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        found = [line for line in daemon.lines if line.get("event") == event]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        daemon.read_some(0.2)


def owned(http: httpx.Client) -> list[EndpointId]:
    return sorted(EndpointId(row["pod"], row["dp_rank"]) for row in pods(http)["pods"])


def test_two_redis_shards_and_a_query_only_replica_answer_as_one_memory_daemon(
    redis_cluster: RedisNodes,
) -> None:
    shared = redis_args(redis_cluster)
    with (
        Fleet(pods=6, dp_sizes=(1, 2), seed=21) as fleet,
        serving(fleet) as memory,
        serving(fleet, *shared, "--shard-count", "2", "--shard-index", "0") as first,
        serving(fleet, *shared, "--shard-count", "2", "--shard-index", "1") as second,
        serving(None, *shared) as reader,  # subscribes to nothing
    ):
        fleet.step(150)
        wait_applied(fleet, memory, list(fleet.ids))
        eventually(
            lambda: sorted(owned(first) + owned(second)) == sorted(fleet.ids),
            what="the shards took every endpoint",
        )
        for shard in (first, second):
            wait_applied(fleet, shard, owned(shard))
        queries = [fleet.sample_query() for _ in range(60)]
        truth = [matches(memory, q) for q in queries]
        assert sum(len(rows) for rows in truth) > 0
        assert [matched_blocks(rows) for rows in truth] == [fleet.ground_truth(q) for q in queries]
        # The writers flush a moment after they apply: the shared index converges, then agrees.
        eventually(
            lambda: [matches(reader, q) for q in queries] == truth,
            what="the query-only replica answers as the memory daemon",
        )
        for shard in (first, second):
            assert [matches(shard, q) for q in queries] == truth


def test_a_writer_killed_mid_ingest_resumes_from_its_stored_seqs(
    redis_cluster: RedisNodes,
) -> None:
    # A replay buffer of 300 batches: once a pod has published more, a replay from seq 0 is a
    # hole (state reset), so a restart that comes back "live" with no reset resumed where the
    # shared index stood (and the batches lost with the writer's last flush fit in the buffer).
    with Fleet(pods=3, dp_sizes=(1, 2), seed=8, replay_capacity=300) as fleet:
        specs = [arg for spec in fleet.endpoint_specs() for arg in ("--endpoint", spec)]
        args = [*specs, *redis_args(redis_cluster)]
        stop = threading.Event()

        def publish() -> None:  # steadily, so a busy machine's ingest lag stays within the buffer
            while not stop.wait(0.005):
                fleet.step(2)

        with serve(args) as first:
            with httpx.Client(base_url=first.start(), timeout=10) as http:
                fleet.step(1400)  # about 350 batches per endpoint
                wait_applied(fleet, http, list(fleet.ids))
            some = fleet.ids[0]
            mark = fleet.publisher(some).stats.next_seq
            publisher = threading.Thread(target=publish)
            publisher.start()
            try:
                eventually(
                    lambda: fleet.publisher(some).stats.next_seq > mark + 10,
                    what="the fleet publishing",
                )
                first.proc.kill()  # SIGKILL while the fleet publishes
            finally:
                stop.set()  # at once: what is published from here on must fit the buffers
                publisher.join()
            first.finish(10)
        fleet.step(5)  # published while no writer runs: within the replay buffers
        fleet.flush()
        assert all(fleet.publisher(e).stats.next_seq > 300 for e in fleet.ids)
        with serve(args) as second, httpx.Client(base_url=second.start(), timeout=10) as http:
            wait_applied(fleet, http, list(fleet.ids))
            rows = pods(http)["pods"]
            seen = [
                (r["pod"], r["dp_rank"], r["state"], r["last_seq"], r["reset_reasons"])
                for r in rows
            ]
            assert {row["state"] for row in rows} == {"live"}, seen
            assert [row["resets"] for row in rows] == [0] * len(rows), seen
            resumed = log_lines(second, "resumed", len(fleet.ids))
            assert all(line["last_seq"] > 0 for line in resumed)
            divergent = 0
            for _ in range(100):
                query = fleet.sample_query()
                got = matched_blocks(matches(http, query))
                want = fleet.ground_truth(query)
                divergent += sum(abs(got.get(e, 0) - want.get(e, 0)) for e in set(got) | set(want))
            assert divergent == 0


def test_while_redis_is_down_the_daemon_is_not_ready_and_lookups_are_503(
    redis_single: RedisNodes,
) -> None:
    with (
        Fleet(pods=2, dp_sizes=(1,), seed=4) as fleet,
        serving(fleet, *redis_args(redis_single)) as http,
    ):
        fleet.step(40)
        wait_applied(fleet, http, list(fleet.ids))
        query = fleet.sample_query()
        eventually(
            lambda: matched_blocks(matches(http, query)) == fleet.ground_truth(query),
            what="answers from Redis",
        )
        (port,) = redis_single.ports
        redis_single.kill_node(port)
        response = http.post("/v1/match", json=query.body())
        assert response.status_code == 503
        assert response.json()["error"].startswith("index unavailable: redis")
        eventually(lambda: http.get("/readyz").status_code == 503, what="/readyz 503")
        assert "index backend: redis" in http.get("/readyz").json()["error"]
        assert http.get("/livez").status_code == 200  # the process is fine: do not restart it
        fleet.step(20)  # ingest goes on meanwhile; the writes wait for Redis
        redis_single.restart_node(port)  # it comes back empty: the writer writes it all again
        eventually(lambda: http.get("/readyz").status_code == 200, what="/readyz 200 again")
        wait_applied(fleet, http, list(fleet.ids))
        for _ in range(40):
            query = fleet.sample_query()
            assert matched_blocks(matches(http, query)) == fleet.ground_truth(query)
