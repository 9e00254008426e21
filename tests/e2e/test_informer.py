"""The informer against a real kube-apiserver: discovery, purges, 410 Gone and restarts."""

import pytest
from kubernetes import client

from kvsync.model import EndpointId
from tests.e2e.cluster import MODEL_LABEL, Cluster, Pods, RecordingSink, eventually
from tests.e2e.conftest import StartInformer

pytestmark = pytest.mark.e2e

bump = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bump"))  # an unwatched write


def ids(sink: RecordingSink) -> list[EndpointId]:
    return sorted(sink.snapshot())


def test_labelled_pods_become_exactly_the_expected_endpoints(
    pods: Pods, start_informer: StartInformer, namespace: str
) -> None:
    # before the informer starts (seen by the list) ...
    pods.create("plain", ip="127.0.0.2")
    pods.create("no-model", model=None, ip="127.0.0.3")
    sink = RecordingSink()
    informer = start_informer(sink)
    eventually(informer.synced.is_set, what="first list applied")
    # ... and after (seen by the watch)
    pods.create(
        "annotated",
        model=None,
        annotations={
            MODEL_LABEL: "mistral",
            "kvsync.io/pub-port": "6000",
            "kvsync.io/replay-port": "7000",
            "kvsync.io/dp-size": "2",
            "kvsync.io/topic": "kv",
        },
        ip="127.0.0.4",
    )
    pods.create("not-selected", enabled=False, ip="127.0.0.5")
    pods.create("no-ip-yet")
    pods.create("lora-v6", labels={"model.aibrix.ai/lora-id": "5"}, ip="fd00::5")
    pods.create("bad-port", annotations={"kvsync.io/pub-port": "http"}, ip="127.0.0.6")
    eventually(lambda: EndpointId(f"{namespace}/lora-v6", 0) in sink.snapshot())
    eventually(lambda: informer.stats().skipped["bad_annotation"] >= 1)

    got = sink.snapshot()
    assert sorted(got) == [
        EndpointId(f"{namespace}/annotated", 0),
        EndpointId(f"{namespace}/annotated", 1),
        EndpointId(f"{namespace}/lora-v6", 0),
        EndpointId(f"{namespace}/plain", 0),
    ]
    plain = got[EndpointId(f"{namespace}/plain", 0)]
    assert (plain.model, plain.pub, plain.replay, plain.lora_id) == (
        "llama",
        "tcp://127.0.0.2:5557",
        None,
        None,
    )
    rank1 = got[EndpointId(f"{namespace}/annotated", 1)]
    assert (rank1.model, rank1.pub, rank1.replay, rank1.topic) == (
        "mistral",
        "tcp://127.0.0.4:6001",
        "tcp://127.0.0.4:7001",
        "kv",
    )
    v6 = got[EndpointId(f"{namespace}/lora-v6", 0)]
    assert (v6.pub, v6.lora_id) == ("tcp://[fd00::5]:5557", 5)
    skipped = informer.stats().skipped
    assert skipped["no_model"] >= 1
    assert skipped["no_ip"] >= 1
    assert informer.last_error() is None


def test_delete_ip_change_label_removal_and_restart_purge_that_endpoint_only(
    pods: Pods, start_informer: StartInformer, namespace: str
) -> None:
    names = ["deleted", "moved", "unlabelled", "deselected", "restarted", "renamed", "steady"]
    for number, name in enumerate(names, start=2):
        pods.create(name, ip=f"127.0.1.{number}")
    sink = RecordingSink()
    informer = start_informer(sink)
    eventually(lambda: len(sink.snapshot()) == len(names), what="every pod subscribed")
    assert informer.synced.is_set()
    before = sink.snapshot()
    baseline = len(sink.commands())

    def ep(name: str) -> EndpointId:
        return EndpointId(f"{namespace}/{name}", 0)

    pods.delete("deleted")
    pods.set_status("moved", ip="127.0.1.99")
    pods.patch_labels("unlabelled", {MODEL_LABEL: None})
    pods.patch_labels("deselected", {"model.aibrix.ai/kv-events-enabled": None})
    pods.set_status("restarted", ip="127.0.1.6", restarts=1)
    pods.patch_labels("renamed", {MODEL_LABEL: "qwen"})
    eventually(lambda: sink.snapshot().get(ep("renamed"), before[ep("renamed")]).model == "qwen")

    after = sink.snapshot()
    assert sorted(after) == [ep("moved"), ep("renamed"), ep("restarted"), ep("steady")]
    assert after[ep("moved")].pub == "tcp://127.0.1.99:5557"
    assert after[ep("restarted")].generation != before[ep("restarted")].generation
    assert after[ep("restarted")].pub == before[ep("restarted")].pub
    assert after[ep("steady")] == before[ep("steady")]
    # exactly one command per change: removals for the gone, a replacing set (purge) for the rest
    assert sorted(sink.commands()[baseline:]) == sorted(
        [
            ("remove", ep("deleted")),
            ("set", ep("moved")),
            ("remove", ep("unlabelled")),
            ("remove", ep("deselected")),
            ("set", ep("restarted")),
            ("set", ep("renamed")),
        ]
    )


def test_apiserver_restart_with_410_relists_without_touching_live_endpoints(
    cluster: Cluster,
    admin: client.ApiClient,
    pods: Pods,
    start_informer: StartInformer,
    namespace: str,
) -> None:
    for number in range(3):
        pods.create(f"live-{number}", ip=f"127.0.2.{number + 2}")
    sink = RecordingSink()
    informer = start_informer(sink)
    eventually(lambda: len(sink.snapshot()) == 3, what="three live endpoints")
    commands_before, relists_before = sink.commands(), informer.stats().relists

    # Move etcd past the informer's resourceVersion with a write it does not watch; a restarted
    # apiserver's watch cache then starts later, so resuming the watch gets 410 Gone.
    client.CoreV1Api(admin).create_namespaced_config_map(namespace, bump)
    cluster.restart_apiserver()
    eventually(lambda: informer.stats().relists > relists_before, what="a re-list after 410")
    assert informer.stats().errors["gone"] >= 1
    assert sink.commands() == commands_before  # no spurious remove/set for unchanged pods

    pods.create("after-restart", ip="127.0.2.9")  # and the watch is live again
    eventually(lambda: EndpointId(f"{namespace}/after-restart", 0) in sink.snapshot())
    assert informer.synced.is_set()
    assert sink.commands() == [
        *commands_before,
        ("set", EndpointId(f"{namespace}/after-restart", 0)),
    ]


def test_etcd_compaction_410_relists_and_converges(
    cluster: Cluster,
    admin: client.ApiClient,
    pods: Pods,
    start_informer: StartInformer,
    namespace: str,
) -> None:
    # Without a watch cache for pods, watches are served by etcd itself, so compacting etcd
    # makes any older resourceVersion 410 Gone. A 1 s server-side watch timeout makes the
    # informer resume often (stream timeouts), from its last resourceVersion.
    cluster.restart_apiserver("--watch-cache-sizes=pods#0")
    try:
        pods.create("kept", ip="127.0.3.2")
        pods.create("dropped", ip="127.0.3.3")
        sink = RecordingSink()
        informer = start_informer(sink, watch_timeout_seconds=1)
        eventually(lambda: len(sink.snapshot()) == 2, what="two endpoints")
        eventually(lambda: informer.stats().watch_restarts >= 2, what="resumed after timeouts")
        assert informer.stats().relists == 1  # resuming a timed-out stream is not a re-list
        commands_before = sink.commands()

        # Two unwatched writes, then compaction: etcd keeps only revisions from the last one on,
        # so resuming at (informer's resourceVersion + 1) is too old.
        core = client.CoreV1Api(admin)
        for name in ("bump-1", "bump-2"):
            core.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name))
            )
        cluster.compact()
        eventually(lambda: informer.stats().relists >= 2, what="a re-list after compaction")
        assert informer.stats().errors["gone"] >= 1
        assert sink.commands() == commands_before

        pods.delete("dropped")  # converges on later changes as well
        eventually(lambda: EndpointId(f"{namespace}/dropped", 0) not in sink.snapshot())
        assert sorted(sink.snapshot()) == [EndpointId(f"{namespace}/kept", 0)]
    finally:
        cluster.restart_apiserver()


def test_stop_is_bounded_while_a_watch_is_open(pods: Pods, start_informer: StartInformer) -> None:
    pods.create("one", ip="127.0.4.2")
    sink = RecordingSink()
    informer = start_informer(sink)
    eventually(lambda: len(sink.snapshot()) == 1)
    eventually(lambda: all(w.thread.is_alive() for w in informer.watches))
    assert informer.stop(timeout_seconds=2)


def test_several_namespaces_and_all_namespaces(
    admin: client.ApiClient, pods: Pods, start_informer: StartInformer, namespace: str
) -> None:
    core = client.CoreV1Api(admin)
    other = f"{namespace}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    other_pods = Pods(core, other)
    mark = {"kvsync-e2e": namespace}  # keeps other tests' pods out of the all-namespaces view
    pods.create("here", labels=mark, ip="127.0.9.2")
    other_pods.create("there", labels=mark, ip="127.0.9.3")
    here, there = EndpointId(f"{namespace}/here", 0), EndpointId(f"{other}/there", 0)
    expected = sorted([here, there])

    both = RecordingSink()
    listed = start_informer(both, namespaces=(namespace, other))
    assert len(listed.watches) == 2  # one list/watch thread per namespace
    eventually(lambda: ids(both) == expected, what="pods of both namespaces")
    assert listed.synced.is_set()

    everywhere = RecordingSink()
    selector = f"model.aibrix.ai/kv-events-enabled=true,kvsync-e2e={namespace}"
    cluster_wide = start_informer(everywhere, namespaces=(), selector=selector)
    eventually(lambda: ids(everywhere) == expected, what="pods of every namespace")
    other_pods.delete("there")
    eventually(lambda: ids(everywhere) == [here] and ids(both) == [here])
    assert cluster_wide.synced.is_set()
