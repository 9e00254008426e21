"""Fixtures of the e2e tier: one real apiserver per session, a fresh namespace per test."""

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kvsync.discovery.base import Sink
from kvsync.discovery.kubernetes.source import Informer
from kvsync.discovery.kubernetes.watch import InformerOptions
from tests.e2e.cluster import APISERVER_BIN, Cluster, Pods

_namespaces = itertools.count()

StartInformer = Callable[..., Informer]


@pytest.fixture(scope="session", name="cluster")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not APISERVER_BIN.exists():
        pytest.fail(
            f"{APISERVER_BIN} is missing: run `scripts/kube-apiserver.sh build` first "
            "(make e2e does; it takes about 4 minutes once)"
        )
    cluster = Cluster(Path(tmp_path_factory.mktemp("apiserver")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(name="admin")
def _admin(cluster: Cluster) -> Iterator[client.ApiClient]:
    api = cluster.api()
    yield api
    api.close()  # type: ignore[no-untyped-call]  # untyped in the client


@pytest.fixture(name="namespace")
def _namespace(admin: client.ApiClient, request: pytest.FixtureRequest) -> str:
    # Without a controller-manager a deleted namespace never goes away: use a new one per test.
    name = f"e2e-{next(_namespaces)}-{request.node.name[5:25].replace('_', '-').strip('-')}"
    client.CoreV1Api(admin).create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
    )
    return name


@pytest.fixture(name="pods")
def _pods(admin: client.ApiClient, namespace: str) -> Pods:
    return Pods(client.CoreV1Api(admin), namespace)


@pytest.fixture(name="start_informer")
def _start_informer(cluster: Cluster, namespace: str) -> Iterator[StartInformer]:
    """Start an informer on the test's namespace; every one started is stopped at the end."""
    started: list[tuple[Informer, client.ApiClient]] = []

    def start(sink: Sink, *, token: str | None = None, **options: object) -> Informer:
        api = cluster.api(token)
        settings = {"namespaces": (namespace,), "backoff_max_seconds": 1.0, **options}
        informer = Informer(api, sink, InformerOptions(**settings))  # type: ignore[arg-type]  # test knobs
        informer.start()
        started.append((informer, api))
        return informer

    yield start
    for informer, api in started:
        assert informer.stop(timeout_seconds=5), "informer threads did not stop within 5 s"
        api.close()  # type: ignore[no-untyped-call]  # untyped in the client
