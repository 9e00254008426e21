"""kvsync.discovery.shards: rendezvous hashing gives every endpoint one owner, moves about
1/(k+1) of them when a shard is added, and ``ShardSink`` passes on exactly this shard's share."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsync.discovery.shards import Shard, ShardSink, owner
from kvsync.errors import ConfigError
from kvsync.model import Endpoint, EndpointId

ENDPOINTS = [EndpointId(f"ns-{i % 7}/vllm-{i}", i % 4) for i in range(4000)]


def _owners(count: int) -> list[int]:
    return [owner(e, count) for e in ENDPOINTS]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_every_endpoint_has_exactly_one_owner_and_shares_are_even(count: int) -> None:
    shards = [Shard(i, count) for i in range(count)]
    for endpoint in ENDPOINTS[:500]:
        assert sum(shard.owns(endpoint) for shard in shards) == 1
    share = len(ENDPOINTS) / count
    per_shard = [_owners(count).count(i) for i in range(count)]
    assert all(abs(n - share) < 0.15 * share for n in per_shard), per_shard


@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
def test_adding_a_shard_moves_about_one_in_k_plus_1_and_only_to_the_new_shard(k: int) -> None:
    before, after = _owners(k), _owners(k + 1)
    moved = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    assert all(new == k for _, new in moved)  # nothing moves between the old shards
    expected = len(ENDPOINTS) / (k + 1)
    assert abs(len(moved) - expected) < 0.15 * expected, (len(moved), expected)


@given(
    pod=st.text(min_size=1, max_size=40),
    rank=st.integers(0, 1023),
    count=st.integers(1, 64),
)
def test_the_owner_is_in_range_and_the_same_on_every_replica(
    pod: str, rank: int, count: int
) -> None:
    endpoint = EndpointId(pod, rank)
    found = owner(endpoint, count)
    assert 0 <= found < count
    assert owner(EndpointId(pod, rank), count) == found  # a pure function of the id
    assert [Shard(i, count).owns(endpoint) for i in range(count)].count(True) == 1


@pytest.mark.parametrize(("index", "count"), [(0, 0), (1, 1), (-1, 2), (3, 3)])
def test_shard_out_of_range_is_a_config_error(index: int, count: int) -> None:
    with pytest.raises(ConfigError):
        Shard(index, count)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, EndpointId]] = []

    def set_endpoint(self, endpoint: Endpoint) -> None:
        self.calls.append(("set", endpoint.id))

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        self.calls.append(("remove", endpoint_id))


def _endpoint(endpoint_id: EndpointId) -> Endpoint:
    return Endpoint(
        id=endpoint_id, model="llama", pub=f"tcp://127.0.0.1:{5000 + endpoint_id.dp_rank}"
    )


def test_shard_sink_forwards_only_its_endpoints_and_counts_the_others() -> None:
    shard = Shard(1, 3)
    ids = ENDPOINTS[:60]
    mine = [e for e in ids if shard.owns(e)]
    recorder = Recorder()
    sink = ShardSink(recorder, shard)
    for endpoint_id in ids:
        sink.set_endpoint(_endpoint(endpoint_id))
    assert recorder.calls == [("set", e) for e in mine]
    assert (sink.owned, sink.skipped) == (len(mine), len(ids) - len(mine))
    sink.set_endpoint(_endpoint(ids[0]))  # a changed endpoint is set again: still counted once
    assert sink.owned + sink.skipped == len(ids)

    for endpoint_id in ids:
        sink.remove_endpoint(endpoint_id)
    assert [c for c in recorder.calls if c[0] == "remove"] == [("remove", e) for e in mine]
    assert (sink.owned, sink.skipped) == (0, 0)


def test_one_shard_forwards_everything() -> None:
    recorder = Recorder()
    sink = ShardSink(recorder, Shard())
    for endpoint_id in ENDPOINTS[:10]:
        sink.set_endpoint(_endpoint(endpoint_id))
    assert [e for _, e in recorder.calls] == ENDPOINTS[:10]
    assert sink.skipped == 0
