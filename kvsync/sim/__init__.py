"""The simulated vLLM fleet: engines, KV-event publishers on loopback, traffic, ground truth.

Used by ``kvsync demo``, the integration tests and the benchmarks; documented in
docs/simulator.md. I/O edge: ``publisher`` (+ ``publisher_commands``),
``sockets`` and ``fleet`` use zmq and threads; ``engine``, ``groundtruth``, ``workload``, ``eras``
and ``records`` are pure and deterministic given a seed.

    from kvsync.sim import Fleet
    with Fleet(pods=3, seed=1) as fleet:
        endpoints = fleet.endpoints()     # hand these to the daemon
        fleet.wait_for_subscribers()
        fleet.step(50)
        fleet.flush()
        q = fleet.sample_query()
        fleet.ground_truth(q)             # {EndpointId: matched_blocks}
"""

from kvsync.sim.engine import Engine
from kvsync.sim.eras import Era, HashFormat
from kvsync.sim.fleet import DEFAULT_ADAPTER, Fleet, SimEndpoint
from kvsync.sim.groundtruth import Context
from kvsync.sim.publisher import Publisher
from kvsync.sim.publisher_commands import PublisherStats
from kvsync.sim.records import Adapter, Request, SimError, SimQuery, SimTimeoutError
from kvsync.sim.sockets import AddressInUseError, Malformed
from kvsync.sim.workload import Mix, PromptLibrary, QuerySampler, Workload

__all__ = [
    "DEFAULT_ADAPTER",
    "Adapter",
    "AddressInUseError",
    "Context",
    "Engine",
    "Era",
    "Fleet",
    "HashFormat",
    "Malformed",
    "Mix",
    "PromptLibrary",
    "Publisher",
    "PublisherStats",
    "QuerySampler",
    "Request",
    "SimEndpoint",
    "SimError",
    "SimQuery",
    "SimTimeoutError",
    "Workload",
]
