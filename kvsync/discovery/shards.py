"""Sharded ingest, pure: which replica subscribes to which endpoint, and the ``Sink`` that keeps
only this replica's share.

With ``--shard-count N --shard-index i`` every replica runs discovery as usual (each watches the
same pods) and passes its discovered endpoints through ``ShardSink``, which forwards to ingest
only the endpoints whose owner is ``i`` and counts the others as skipped. The owner is decided by
rendezvous hashing (highest random weight): each shard's weight for an endpoint is
``xxh3_64(endpoint id, seed=shard)``, and the heaviest shard owns it. Every replica computes the
same owner from the id alone, with no coordination; going from N to N + 1 shards moves only the
endpoints the new shard now wins, about 1/(N + 1) of them, and none between the old shards.

The endpoint id is ``namespace/pod#rank``: the data-parallel ranks of one pod spread like any
other endpoints. Not thread-safe beyond what the discovery thread needs: one thread sends the
commands; the counters are plain ints another thread may read.
"""

from dataclasses import dataclass

import xxhash

from kvsync.discovery.base import Sink
from kvsync.errors import ConfigError
from kvsync.model import Endpoint, EndpointId


def weight(endpoint_id: EndpointId, shard: int) -> int:
    """Shard ``shard``'s rendezvous weight for this endpoint (uint64)."""
    key = f"{endpoint_id.pod}#{endpoint_id.dp_rank}".encode()
    return int(xxhash.xxh3_64_intdigest(key, seed=shard))


def owner(endpoint_id: EndpointId, count: int) -> int:
    """The shard in ``[0, count)`` that subscribes to this endpoint (ties: the lowest index)."""
    return max(range(count), key=lambda shard: (weight(endpoint_id, shard), -shard))


@dataclass(frozen=True, slots=True)
class Shard:
    """This replica's place among ``count`` shards; ``Shard(0, 1)`` owns every endpoint."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"shard count must be at least 1, not {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard index {self.index} is not in [0, {self.count})")

    def owns(self, endpoint_id: EndpointId) -> bool:
        return self.count == 1 or owner(endpoint_id, self.count) == self.index


class ShardSink:
    """A ``Sink`` in front of ingest that passes on only this shard's endpoints.

    ``skipped`` is how many discovered endpoints are currently another shard's (a removal of one
    of them forgets it); ``owned`` how many of this shard's are subscribed.
    """

    def __init__(self, sink: Sink, shard: Shard) -> None:
        self._sink = sink
        self.shard = shard
        self._skipped: set[EndpointId] = set()
        self._owned: set[EndpointId] = set()

    @property
    def skipped(self) -> int:
        return len(self._skipped)

    @property
    def owned(self) -> int:
        return len(self._owned)

    def set_endpoint(self, endpoint: Endpoint) -> None:
        if self.shard.owns(endpoint.id):
            self._owned.add(endpoint.id)
            self._sink.set_endpoint(endpoint)
        else:
            self._skipped.add(endpoint.id)

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        if self.shard.owns(endpoint_id):
            self._owned.discard(endpoint_id)
            self._sink.remove_endpoint(endpoint_id)
        else:
            self._skipped.discard(endpoint_id)
