"""Sharded ingest end to end: two daemons with ``--shard-count 2`` (indices 0 and 1) in front of
one simulated fleet subscribe every endpoint exactly once between them, and together answer what
the fleet's engines hold."""

import httpx
import pytest

from kvsync.discovery.shards import owner
from kvsync.model import EndpointId
from kvsync.sim import Fleet
from tests.integration.daemons import (
    matched_blocks,
    matches,
    pods,
    serving,
    wait_applied,
)
from tests.integration.ingest_harness import eventually

pytestmark = pytest.mark.integration


def _subscribed(http: httpx.Client, discovered: int) -> set[EndpointId]:
    """The endpoints the daemon subscribes to, once it has taken every discovered one in
    (discovery hands them to the ingest thread through a queue): subscribed + skipped."""

    def complete() -> bool:
        body = pods(http)
        return bool(len(body["pods"]) + body["shard"]["skipped_endpoints"] == discovered)

    eventually(complete, what=f"{http.base_url} took in {discovered} endpoints")
    return {EndpointId(row["pod"], row["dp_rank"]) for row in pods(http)["pods"]}


def test_two_shards_subscribe_every_endpoint_exactly_once_and_answer_together() -> None:
    with (
        Fleet(pods=8, dp_sizes=(1, 2), seed=14) as fleet,
        serving(fleet, "--shard-count", "2", "--shard-index", "0") as first,
        serving(fleet, "--shard-count", "2", "--shard-index", "1") as second,
    ):
        everything = set(fleet.ids)
        shares = [_subscribed(http, len(everything)) for http in (first, second)]
        assert shares[0] | shares[1] == everything
        assert not shares[0] & shares[1]
        assert all(shares), shares  # 12 endpoints: each shard has some
        for index, (http, share) in enumerate(zip((first, second), shares, strict=True)):
            assert share == {e for e in everything if owner(e, 2) == index}
            shard = pods(http)["shard"]
            assert shard == {
                "index": index,
                "count": 2,
                "skipped_endpoints": len(everything - share),
            }
            text = http.get("/metrics").text
            assert "kvsync_shard_count 2.0" in text
            assert f"kvsync_shard_index {index}.0" in text
            assert f"kvsync_endpoints_skipped {len(everything - share)}.0" in text

        # The publishers' side: one subscription each, from its owner only.
        fleet.wait_for_subscribers()
        assert {e: fleet.publisher(e).stats.subscriptions for e in fleet.ids} == dict.fromkeys(
            fleet.ids, 1
        )

        fleet.step(120)
        for http, share in zip((first, second), shares, strict=True):
            wait_applied(fleet, http, sorted(share))
        hits = 0
        for _ in range(80):
            query = fleet.sample_query()
            truth = fleet.ground_truth(query)
            answers = [matched_blocks(matches(http, query)) for http in (first, second)]
            assert set(answers[0]) <= shares[0]
            assert set(answers[1]) <= shares[1]
            assert answers[0] | answers[1] == truth
            hits += len(truth)
        assert hits > 0  # the queries do reach held prefixes
