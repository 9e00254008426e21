"""The Redis backend through the faults of a shared store: a second writer, a restart with another
incarnation, a failover that lost writes, Redis gone and back, a master killed mid-ingest.

Every answer is checked against a memory backend fed the same events (the truth), on the real
test deployments of tests/conftest.py.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kvsync.errors import ConfigError, IndexUnavailableError
from kvsync.index.backend import BackendSettings, RedisSettings, open_backend
from kvsync.index.memory.backend import MemoryBackend
from kvsync.index.redis import layout
from kvsync.index.redis.backend import RedisBackend
from kvsync.index.values import EndpointContext, MatchResult, Query
from kvsync.model import BlockRemoved, BlockStored, EndpointId, EngineHash, Event, encode_tokens
from tests.redis.nodes import RedisNodes

BS = 4
EP = EndpointId("ns/pod-a", 0)
OTHER = EndpointId("ns/pod-b", 1)
CTX = EndpointContext("m")


def backend(nodes: RedisNodes) -> RedisBackend:
    opened = open_backend("redis", BackendSettings(redis=RedisSettings(url=nodes.url)))
    assert isinstance(opened, RedisBackend)
    return opened


@contextmanager
def writer(nodes: RedisNodes) -> Iterator[RedisBackend]:
    opened = backend(nodes)
    try:
        yield opened
    finally:
        opened.close()


def chain_events(conv: int, blocks: int, parent: int | None = None) -> BlockStored:
    """``blocks`` blocks of conversation ``conv`` (engine hashes conv * 1000 + position)."""
    first = 0 if parent is None else parent % 1000 + 1
    hashes: list[EngineHash] = [conv * 1000 + first + i for i in range(blocks)]
    ids = [conv * 10_000 + (first + i) * BS + t for i in range(blocks) for t in range(BS)]
    return BlockStored(hashes, parent, encode_tokens(ids), BS)


def query(conv: int, blocks: int) -> Query:
    return Query("m", [conv * 10_000 + t for t in range(blocks * BS)])


def answers(result: MatchResult) -> list[tuple[EndpointId, int]]:
    return [(m.endpoint, m.matched_blocks) for m in result.matches]


class Pair:
    """A Redis writer and the truth: the same events into a memory backend."""

    def __init__(self, redis_backend: RedisBackend) -> None:
        self.redis = redis_backend
        self.truth = MemoryBackend()
        self.seq: dict[EndpointId, int] = {}

    def apply(self, endpoint: EndpointId, *events: Event) -> None:
        seq = self.seq.get(endpoint, -1) + 1
        self.seq[endpoint] = seq
        want = self.truth.apply(endpoint, CTX, events, 0.0, seq)
        got = self.redis.apply(endpoint, CTX, events, 0.0, seq)
        assert (got.stored_blocks, got.removed_blocks) == (want.stored_blocks, want.removed_blocks)

    def agree(self, *queries: Query, reader: RedisBackend | None = None) -> None:
        assert self.redis.flush()
        for q in queries:
            assert answers((reader or self.redis).match(q, 0.0)) == answers(
                self.truth.match(q, 0.0)
            )


def test_a_second_writer_fences_the_first(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first, writer(redis_cluster) as second:
        pair = Pair(first)
        assert first.resume(EP, "uid-1") is None
        pair.apply(EP, chain_events(1, 6))
        pair.agree(query(1, 6))
        # Another replica takes the endpoint over (a shard moved): it finds the blocks and seq.
        assert second.resume(EP, "uid-1") == 0
        assert second.blocks_held(EP) == 6
        taken = Pair(second)
        taken.truth, taken.seq = pair.truth, pair.seq
        taken.apply(EP, BlockRemoved([1003, 1004, 1005]))
        # The first writer does not know: its write is refused, not mixed in.
        first.apply(EP, CTX, [BlockRemoved([1000])], 0.0, 1)
        assert first.flush()
        taken.agree(query(1, 6))
        assert answers(second.match(query(1, 6), 0.0)) == [(EP, 3)]


def test_a_restart_as_another_incarnation_starts_from_nothing(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first:
        assert first.resume(EP, "uid-1") is None
        first.apply(EP, CTX, [chain_events(1, 5)], 0.0, 0)
    with writer(redis_cluster) as second:
        assert second.resume(EP, "uid-2") is None  # a new pod under the old name
        assert second.blocks_held(EP) == 0
        assert answers(second.match(query(1, 5), 0.0)) == []


def test_an_endpoint_nobody_follows_is_not_answered_until_a_writer_resumes_it(
    redis_cluster: RedisNodes,
) -> None:
    with writer(redis_cluster) as reader:
        with writer(redis_cluster) as first:
            assert first.resume(EP, "uid-1") is None
            first.apply(EP, CTX, [chain_events(1, 5)], 0.0, 0)
            assert first.flush()
            assert answers(reader.match(query(1, 5), 0.0)) == [(EP, 5)]
        # Its writer stopped (cleanly: the lease is released; a crash lets it run out): nobody
        # follows the endpoint's events, so its blocks are no longer known to be true.
        assert answers(reader.match(query(1, 5), 0.0)) == []
        with writer(redis_cluster) as second:
            assert second.resume(EP, "uid-1") == 0
            assert answers(reader.match(query(1, 5), 0.0)) == [(EP, 5)]


def test_a_writer_that_never_resumed_replaces_what_was_stored(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first:
        first.apply(EP, CTX, [chain_events(1, 5)], 0.0, 0)
    with writer(redis_cluster) as second:
        pair = Pair(second)
        pair.apply(EP, chain_events(2, 3))
        pair.agree(query(1, 5), query(2, 3))


def test_writes_lost_by_a_failover_are_written_again(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first:
        pair = Pair(first)
        assert first.resume(EP, "uid-1") is None
        pair.apply(EP, chain_events(1, 8))
        pair.apply(EP, BlockRemoved([1007]))
        pair.agree(query(1, 8))
        # What asynchronous replication can lose: the tail of the endpoint's writes. Here the
        # store goes back to seq 0 with blocks of it missing, as a promoted replica would have.
        tag = layout.endpoint_tag(EP)
        client = redis_cluster.client()
        try:
            client.hset(layout.meta_key(tag), "seq", "0")
            context = layout.context_tag(("m", None, BS))
            lost = list(client.hkeys(layout.data_key(tag, context)))[:4]
            client.hdel(layout.data_key(tag, context), *lost)
            client.srem(layout.held_key(tag, context), *lost)
        finally:
            client.close()
        assert answers(first.match(query(1, 8), 0.0)) != answers(pair.truth.match(query(1, 8), 0.0))
        pair.apply(EP, chain_events(3, 2))  # the next write finds the store behind
        assert first.flush()
        pair.agree(query(1, 8), query(3, 2))


def test_while_redis_is_down_lookups_fail_writes_wait_and_then_land(
    redis_single: RedisNodes,
) -> None:
    with writer(redis_single) as first:
        pair = Pair(first)
        assert first.resume(EP, "uid-1") is None
        pair.apply(EP, chain_events(1, 4))
        pair.agree(query(1, 4))
        (port,) = redis_single.ports
        redis_single.kill_node(port)
        with pytest.raises(IndexUnavailableError, match="redis"):
            first.match(query(1, 4), 0.0)
        pair.apply(EP, BlockRemoved([1003]), chain_events(2, 2))  # never raises: it waits
        pair.apply(OTHER, chain_events(4, 3))
        assert not first.flush(timeout_s=0.5)
        assert first.health() is not None
        redis_single.restart_node(port)  # empty: the test node keeps nothing on disk
        pair.agree(query(1, 4), query(2, 2), query(4, 3))
        assert first.health() is None


def test_a_master_killed_mid_ingest_leaves_true_answers(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first:
        pair = Pair(first)
        endpoints = [EndpointId(f"ns/pod-{i}", 0) for i in range(12)]  # spread over the masters
        for endpoint in endpoints:
            assert first.resume(endpoint, "uid") is None
        stop = threading.Event()
        convs = [0]

        def ingest() -> None:
            while not stop.wait(0.002):  # a steady trickle: what is tested is the failover
                conv = convs[0] = convs[0] + 1
                for endpoint in endpoints:
                    pair.apply(endpoint, chain_events(conv, 3))
                    if conv > 2:  # the tail block of an older conversation goes
                        pair.apply(endpoint, BlockRemoved([(conv - 2) * 1000 + 2]))

        thread = threading.Thread(target=ingest)
        thread.start()
        try:
            killed = redis_cluster.kill_master()
            redis_cluster.wait_promoted(killed)
        finally:
            stop.set()
            thread.join()
        assert convs[0] > 10
        assert first.flush(timeout_s=20.0)
        for conv in range(1, convs[0] + 1):  # every endpoint holds every conversation's head
            assert answers(first.match(query(conv, 3), 0.0)) == answers(
                pair.truth.match(query(conv, 3), 0.0)
            )


def test_lookups_answer_from_another_replica_that_owns_nothing(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first, writer(redis_cluster) as reader:
        pair = Pair(first)
        pair.apply(EP, chain_events(1, 6))
        pair.apply(OTHER, chain_events(1, 3))
        pair.agree(query(1, 6), reader=reader)
        assert reader.stats().endpoints == 0  # it writes nothing


def test_an_unreachable_seed_is_a_clear_error() -> None:
    with pytest.raises(IndexUnavailableError, match="redis"):
        open_backend("redis", BackendSettings(redis=RedisSettings(url="redis://127.0.0.1:9")))


def test_an_endpoint_whose_lease_ran_out_is_not_answered(redis_cluster: RedisNodes) -> None:
    with writer(redis_cluster) as first:
        assert first.resume(EP, "uid-1") is None
        first.apply(EP, CTX, [chain_events(1, 5)], 0.0, 0)
        assert first.flush()
        assert answers(first.match(query(1, 5), 0.0)) == [(EP, 5)]
        # What a crashed owner leaves: a lease in the past (it runs 15 s; nobody renews it).
        client = redis_cluster.client()
        try:
            client.hset(layout.meta_key(layout.endpoint_tag(EP)), "lease", "1")
        finally:
            client.close()
        assert answers(first.match(query(1, 5), 0.0)) == []
        first.apply(EP, CTX, [chain_events(2, 1)], 0.0, 1)  # its owner writes again: renewed
        assert first.flush()
        assert answers(first.match(query(1, 5), 0.0)) == [(EP, 5)]


def test_the_password_comes_from_a_file(redis_single: RedisNodes, tmp_path: Path) -> None:
    (port,) = redis_single.ports
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")  # as a mounted Secret: the trailing newline is not part of it
    admin = redis_single.node(port)
    admin.config_set("requirepass", "s3cret")
    try:
        with pytest.raises(IndexUnavailableError, match="redis"):
            open_backend("redis", BackendSettings(redis=RedisSettings(url=redis_single.url)))
        with_password = RedisSettings(url=redis_single.url, password_file=str(secret))
        opened = open_backend("redis", BackendSettings(redis=with_password))
        assert isinstance(opened, RedisBackend)
        try:
            pair = Pair(opened)
            pair.apply(EP, chain_events(1, 3))
            pair.agree(query(1, 3))
        finally:
            opened.close()
    finally:
        admin.execute_command("AUTH", "s3cret")
        admin.config_set("requirepass", "")
        admin.close()


def test_a_missing_password_file_is_a_configuration_error(tmp_path: Path) -> None:
    missing = RedisSettings(url="redis://127.0.0.1:9", password_file=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="--redis-password-file"):
        open_backend("redis", BackendSettings(redis=missing))
