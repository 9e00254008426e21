"""Informer → real subscriber manager → index, with simulated vLLM publishers on 127.0.x.y.

Pods are created through a real kube-apiserver with their status patched to the loopback
addresses where the publishers listen; the index must hold exactly the blocks those publishers
announced, and lose a pod's blocks when the pod is deleted, moved, unlabelled or restarted.
"""

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from kvsync.index.values import Query
from kvsync.model import BlockStored, EndpointId, encode_tokens
from kvsync.sim.publisher import Publisher
from tests.e2e.cluster import MODEL_LABEL, Cluster, Pods, eventually, free_port
from tests.e2e.conftest import StartInformer
from tests.integration.ingest_harness import Daemon, running_daemon

pytestmark = pytest.mark.e2e

BLOCK = 16
TOKENS = list(range(2 * BLOCK))  # two full blocks


@pytest.fixture(name="daemon")
def _daemon() -> Iterator[Daemon]:
    with running_daemon() as daemon:
        yield daemon


@pytest.fixture(name="publishers")
def _publishers() -> Iterator[list[Publisher]]:
    opened: list[Publisher] = []
    yield opened
    for publisher in opened:
        publisher.close()


def stored(first_hash: int, tokens: list[int] = TOKENS) -> BlockStored:
    return BlockStored(
        block_hashes=[first_hash, first_hash + 1],
        parent_block_hash=None,
        token_ids=encode_tokens(tokens),
        block_size=BLOCK,
    )


def held(daemon: Daemon, endpoint: EndpointId) -> int:
    return daemon.backend.blocks_held(endpoint)


def matched(daemon: Daemon, pods: set[str]) -> dict[EndpointId, int]:
    result = daemon.backend.match(
        Query(model="llama", token_ids=TOKENS, pods=frozenset(pods)), time.time()
    )
    return {m.endpoint: m.matched_blocks for m in result.matches}


def subscribed(daemon: Daemon) -> set[EndpointId]:
    return {e.endpoint.id for e in daemon.manager.snapshot().endpoints}


@pytest.mark.timeout(120)
def test_pods_to_blocks_and_purges_through_the_real_manager(
    pods: Pods,
    start_informer: StartInformer,
    namespace: str,
    daemon: Daemon,
    publishers: list[Publisher],
) -> None:
    port = free_port(2)

    def publisher(host: str, *, dp_rank: int = 0, replay: bool = False) -> Publisher:
        made = Publisher(
            host=host,
            pub_port=port + dp_rank,
            replay_port=free_port() if replay else None,
            dp_rank=dp_rank,
        )
        publishers.append(made)
        return made

    ports = {"kvsync.io/pub-port": str(port)}
    plain = publisher("127.0.7.2")
    replaying = publisher("127.0.7.3", replay=True)
    assert replaying.replay_address is not None
    replay_port = replaying.replay_address.rsplit(":", 1)[1]
    ranks = [publisher("127.0.7.4", dp_rank=r) for r in range(2)]
    dropped = publisher("127.0.7.5")
    pods.create("plain", annotations=ports, ip="127.0.7.2")
    pods.create("replaying", annotations={**ports, "kvsync.io/replay-port": replay_port},
                ip="127.0.7.3")  # fmt: skip
    pods.create("ranks", annotations={**ports, "kvsync.io/dp-size": "2"}, ip="127.0.7.4")
    pods.create("dropped", annotations=ports, ip="127.0.7.5")
    pods.create("no-model", model=None, annotations=ports, ip="127.0.7.6")

    start_informer(daemon.manager)
    names = ["plain", "replaying", "ranks", "dropped"]
    expected = {EndpointId(f"{namespace}/{n}", 0) for n in names}
    expected.add(EndpointId(f"{namespace}/ranks", 1))
    eventually(lambda: subscribed(daemon) == expected, what="the manager follows the pods")
    for number, made in enumerate([plain, replaying, *ranks, dropped]):
        made.wait_for_subscriber()
        made.publish([stored(100 * number)])
    everyone = {f"{namespace}/{n}" for n in names}
    eventually(lambda: matched(daemon, everyone) == dict.fromkeys(expected, 2), what="blocks")

    def ep(name: str, rank: int = 0) -> EndpointId:
        return EndpointId(f"{namespace}/{name}", rank)

    # deleted → unsubscribed and purged
    pods.delete("plain")
    eventually(lambda: ep("plain") not in subscribed(daemon) and held(daemon, ep("plain")) == 0)
    # the container restarted (its publisher starts afresh) → the old blocks are purged,
    # and the warm-start replay from 0 finds nothing to restore
    replaying.restart()
    pods.set_status("replaying", ip="127.0.7.3", restarts=1)
    eventually(lambda: held(daemon, ep("replaying")) == 0, what="restart purged")
    # moved to another IP → purged, then following the publisher at the new address
    moved = publisher("127.0.7.9")
    pods.set_status("dropped", ip="127.0.7.9")
    eventually(lambda: held(daemon, ep("dropped")) == 0, what="IP change purged")
    moved.wait_for_subscriber()
    moved.publish([stored(900)])
    eventually(lambda: held(daemon, ep("dropped")) == 2, what="new address followed")
    # model label removed → unsubscribed and purged, both ranks
    pods.patch_labels("ranks", {MODEL_LABEL: None})
    eventually(lambda: held(daemon, ep("ranks", 0)) + held(daemon, ep("ranks", 1)) == 0)

    assert subscribed(daemon) == {ep("replaying"), ep("dropped")}
    assert matched(daemon, everyone) == {ep("dropped"): 2}
    assert not daemon.manager.failed.is_set()


@pytest.mark.timeout(120)
def test_apiserver_restart_and_410_keep_live_endpoints_subscribed_with_their_blocks(  # noqa: PLR0917  # fixtures
    cluster: Cluster,
    admin: client.ApiClient,
    pods: Pods,
    start_informer: StartInformer,
    namespace: str,
    daemon: Daemon,
    publishers: list[Publisher],
) -> None:
    port = free_port()
    live = Publisher(host="127.0.7.20", pub_port=port, replay_port=None)
    publishers.append(live)
    pods.create("live", annotations={"kvsync.io/pub-port": str(port)}, ip="127.0.7.20")
    informer = start_informer(daemon.manager)
    endpoint = EndpointId(f"{namespace}/live", 0)
    live.wait_for_subscriber()
    live.publish([stored(1)])
    eventually(lambda: held(daemon, endpoint) == 2, what="blocks held")
    relists = informer.stats().relists

    # an unwatched write moves etcd on, so the restarted apiserver answers the resumed watch 410
    client.CoreV1Api(admin).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bump"))
    )
    cluster.restart_apiserver()
    eventually(lambda: informer.stats().relists > relists, what="re-listed after 410")
    # still subscribed: the next batch (another prompt) arrives on the same socket
    live.publish([stored(50, [t + 1000 for t in TOKENS])])
    eventually(lambda: held(daemon, endpoint) == 4, what="old and new blocks held")
    assert live.stats.subscriptions == 1  # never unsubscribed and subscribed again
    assert daemon.manager.snapshot().resets == {}
