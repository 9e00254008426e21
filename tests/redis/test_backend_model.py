"""The Redis backend answers exactly as the memory backend: the index model test, run on both.

The memory index's model-based test (tests/unit/test_index_model.py: random stores with
adapters, copies and unknown parents, removals of named copies, clears, drops, lookups with pod
filters, each checked against a naive reference) drives a Redis backend on the real test cluster
beside it: every apply must report the same outcome, and every lookup must give the same answer
once the writer has flushed. A second machine writes from a restarted writer half-way (claim,
read back, go on), so what a restart reads back is checked the same way.
"""

from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

from kvsync.index.backend import BackendSettings, RedisSettings, open_backend
from kvsync.index.redis.backend import RedisBackend
from kvsync.index.values import EndpointContext, MatchResult, Query
from tests.redis.nodes import RedisNodes
from tests.unit.test_index_model import BS, ENDPOINTS, IndexMachine, adapters, endpoint_ids, tokens

IDENT = "pod-uid-1"


def open_redis(url: str) -> RedisBackend:
    settings = BackendSettings(default_block_size=BS, redis=RedisSettings(url=url))
    backend = open_backend("redis", settings)
    assert isinstance(backend, RedisBackend)
    return backend


def answers(result: MatchResult) -> list[tuple[Any, ...]]:
    return [
        (m.endpoint, m.matched_blocks, dict(m.by_medium), round(m.score, 9)) for m in result.matches
    ]


class RedisBesideMemory(IndexMachine):
    nodes: ClassVar[RedisNodes]
    restarts: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.nodes.flush()
        self.redis = open_redis(self.nodes.url)
        for endpoint in ENDPOINTS:
            assert self.redis.resume(endpoint, IDENT) is None
        self.seqs = [0] * len(ENDPOINTS)  # the next seq of each endpoint
        self.stored: list[int | None] = [None] * len(ENDPOINTS)  # what a restart must find

    def teardown(self) -> None:
        self.redis.close()

    def apply(self, endpoint: int, event: Any) -> Any:
        want = super().apply(endpoint, event)
        seq = self.seqs[endpoint]
        got = self.redis.apply(ENDPOINTS[endpoint], EndpointContext("m"), [event], 0.0, seq)
        self.seqs[endpoint], self.stored[endpoint] = seq + 1, seq
        for name in (
            "stored_blocks",
            "removed_blocks",
            "cleared",
            "events",
            "rejected",
            "rejected_blocks",
            "unknown_removed",
        ):
            assert getattr(got, name) == getattr(want, name), name
        assert got.blocks_held == self.index.blocks_held(ENDPOINTS[endpoint])
        return want

    @rule(endpoint=endpoint_ids)
    def drop(self, endpoint: int) -> None:
        assert self.redis.drop_endpoint(ENDPOINTS[endpoint]) == len(self.held[endpoint])
        self.stored[endpoint] = None
        super().drop(endpoint)

    @rule(
        adapter=adapters,
        query=st.lists(st.integers(0, 2), max_size=5),
        pods=st.none() | st.frozensets(st.sampled_from(["ns/pod-0", "ns/pod-1", "ns/x"])),
    )
    def same_answer(
        self, adapter: str | None, query: list[int], pods: frozenset[str] | None
    ) -> None:
        assert self.redis.flush()
        ask = Query("m", tokens(tuple(query)), lora_name=adapter, pods=pods)
        want = self.index.match(ask, 0.0)
        got = self.redis.match(ask, 0.0)
        assert answers(got) == answers(want)
        if want.matches:
            assert (got.block_size, got.query_blocks) == (want.block_size, want.query_blocks)

    @rule()
    def restart_writer(self) -> None:
        """A new writer (this daemon restarted): it claims every endpoint, reads its blocks back
        and goes on from the stored seq."""
        if not self.restarts:
            return
        assert self.redis.close()
        self.redis = open_redis(self.nodes.url)
        for n, endpoint in enumerate(ENDPOINTS):
            assert self.redis.resume(endpoint, IDENT) == self.stored[n]
            assert self.redis.blocks_held(endpoint) == len(self.held[n])

    @invariant()
    def blocks_held_agree(self) -> None:
        super().blocks_held_agree()
        for n, endpoint in enumerate(ENDPOINTS):
            assert self.redis.blocks_held(endpoint) == len(self.held[n])


class RestartingWriter(RedisBesideMemory):
    restarts = True


@pytest.mark.parametrize("machine", [RedisBesideMemory, RestartingWriter])
def test_redis_backend_answers_as_the_memory_backend(
    redis_cluster: RedisNodes, machine: type[RedisBesideMemory]
) -> None:
    machine.nodes = redis_cluster
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=60,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


def test_the_same_on_a_single_redis_node(redis_single: RedisNodes) -> None:
    RedisBesideMemory.nodes = redis_single
    run_state_machine_as_test(
        RedisBesideMemory,
        settings=settings(max_examples=15, stateful_step_count=25, deadline=None),
    )
