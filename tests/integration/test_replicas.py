"""HA without a shared store: two in-memory daemons subscribed to the same simulated fleet give
identical ``/v1/match`` answers once both have applied the same seqs, including a replica that
joined late and caught up by replay."""

import pytest

from kvsync.sim import Fleet
from tests.integration.daemons import (
    last_seqs,
    matched_blocks,
    matches,
    published,
    serving,
    wait_applied,
)

pytestmark = pytest.mark.integration


def test_two_replicas_give_identical_answers_once_at_the_same_seqs() -> None:
    with Fleet(pods=4, dp_sizes=(1, 2), seed=31) as fleet, serving(fleet) as first:
        fleet.wait_for_subscribers()
        fleet.step(60)  # before the second replica exists: it must replay these
        wait_applied(fleet, first, fleet.ids)
        with serving(fleet) as second:
            for endpoint_id in fleet.ids:  # both SUB sockets connected: live frames reach both
                fleet.publisher(endpoint_id).wait_for_subscriber(count=2)
            fleet.step(60)
            for http in (first, second):
                wait_applied(fleet, http, fleet.ids)
            # Compare answers only at equal seqs: both at every publisher's last one.
            assert last_seqs(first) == last_seqs(second) == published(fleet, fleet.ids)
            hits = 0
            for _ in range(100):
                query = fleet.sample_query()
                answer = matches(first, query)
                assert matches(second, query) == answer
                assert matched_blocks(answer) == fleet.ground_truth(query)
                hits += len(answer)
            assert hits > 0
