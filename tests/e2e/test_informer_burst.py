"""300 pods created and deleted in a burst: the informer converges and leaks no endpoint."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvsync.model import EndpointId
from tests.e2e.cluster import Pods, RecordingSink, eventually
from tests.e2e.conftest import StartInformer

pytestmark = pytest.mark.e2e

PODS = 300
CLIENT_THREADS = 8  # parallel API calls, as a rollout of many replicas would make


@pytest.mark.timeout(300)
def test_burst_of_300_pods_converges_with_one_set_and_one_remove_each(
    pods: Pods, start_informer: StartInformer, namespace: str
) -> None:
    sink = RecordingSink()
    informer = start_informer(sink)
    eventually(informer.synced.is_set)
    names = [f"burst-{n:03d}" for n in range(PODS)]

    def create(number: int) -> None:
        pods.create(names[number], ip=f"127.1.{number // 200}.{number % 200 + 1}")

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(create, range(PODS)))
    expected = {EndpointId(f"{namespace}/{name}", 0) for name in names}
    eventually(lambda: set(sink.snapshot()) == expected, timeout_s=120, what="all 300 subscribed")
    assert sink.snapshot()[EndpointId(f"{namespace}/burst-201", 0)].pub == "tcp://127.1.1.2:5557"

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        list(pool.map(pods.delete, names))
    eventually(lambda: sink.snapshot() == {}, timeout_s=120, what="every endpoint removed")

    per_endpoint = Counter(sink.commands())
    assert {command for command, _ in per_endpoint} == {"set", "remove"}
    assert all(per_endpoint[("set", e)] == 1 for e in expected)
    assert all(per_endpoint[("remove", e)] == 1 for e in expected)
    assert len(sink.commands()) == 2 * PODS
    assert informer.stats().errors == {}
