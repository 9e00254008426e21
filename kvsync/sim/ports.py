"""Where simulated pods listen: vLLM's data-parallel port rule, binding with retry. I/O edge.

vLLM's rule: DP rank r of a pod publishes on base + r, for the live and for the replay socket.
Here a pod's live ports are ``base .. base+dp-1`` and its replay ports
``base+REPLAY_PORT_OFFSET .. base+REPLAY_PORT_OFFSET+dp-1``. A fixed layout (the demo's) gives
pod i the base ``base_port + POD_PORT_STRIDE * i``; otherwise a random base is tried until every
port of the pod is free. Runs in the caller's thread; raises ``AddressInUseError`` for a fixed
base that is taken and ``SimError`` when no random base works.
"""

import random
from collections.abc import Callable, Sequence
from typing import Final

from kvsync.model import Endpoint
from kvsync.sim.publisher import Publisher
from kvsync.sim.records import SimError
from kvsync.sim.sockets import AddressInUseError

REPLAY_PORT_OFFSET: Final = 10
POD_PORT_STRIDE: Final = 20
_BIND_ATTEMPTS: Final = 50
_RANDOM_BASES: Final = (20_000, 60_000)

# make(rank, pub_port, replay_port or None) -> a bound, running publisher
MakePublisher = Callable[[int, int, int | None], Publisher]


def bind_pod(
    make: MakePublisher, *, dp_size: int, base: int | None, replay: bool, rng: random.Random
) -> list[Publisher]:
    """The publishers of one pod, rank r on base + r (replay on base + offset + r)."""
    for _ in range(_BIND_ATTEMPTS if base is None else 1):
        start = rng.randrange(*_RANDOM_BASES) if base is None else base
        publishers: list[Publisher] = []
        try:
            for rank in range(dp_size):
                replay_port = start + REPLAY_PORT_OFFSET + rank if replay else None
                publishers.append(make(rank, start + rank, replay_port))
        except AddressInUseError:
            for publisher in publishers:
                publisher.close()
            if base is not None:
                raise
            continue
        except BaseException:
            for publisher in publishers:
                publisher.close()
            raise
        return publishers
    raise SimError(f"no free ports for a pod after {_BIND_ATTEMPTS} attempts")


def endpoint_specs(endpoints: Sequence[Endpoint]) -> list[str]:
    """``kvsync serve --endpoint`` specs: one per pod, with ``dp_size`` when it has ranks > 0."""
    specs = []
    for endpoint in endpoints:
        if endpoint.id.dp_rank:
            continue
        ranks = sum(1 for e in endpoints if e.id.pod == endpoint.id.pod)
        spec = f"name={endpoint.id.pod},model={endpoint.model},pub={endpoint.pub}"
        if endpoint.replay:
            spec += f",replay={endpoint.replay}"
        if ranks > 1:
            spec += f",dp_size={ranks}"
        if endpoint.topic:
            spec += f",topic={endpoint.topic}"
        if endpoint.engine:  # http://host:port, on the pub host
            spec += f",engine_port={endpoint.engine.rpartition(':')[2]}"
        specs.append(spec)
    return specs
