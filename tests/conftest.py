"""Test-wide settings and the fixtures of real Redis nodes.

Hypothesis: CI (``.ci/run`` sets ``HYPOTHESIS_PROFILE=ci``) runs the same examples on every
run, so a red CI is reproducible and never a coin toss; developers get fresh random examples
each run (the default profile) and hypothesis's database replays any failure it found.

Redis: one cluster (3 masters + 3 replicas) and one plain node per test run, started on first
use by scripts/redis-cluster.sh (tests/redis/nodes.py) and stopped at the end. A test asks for
``redis_cluster`` or ``redis_single``: the nodes up, the keyspace empty. Such tests get the
``redis`` marker here (``-m "not redis"`` leaves them out); ``make test`` runs them.
"""

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.redis.nodes import RedisNodes, ensure_redis_server

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REDIS_FIXTURES = frozenset({"redis_cluster", "redis_single", "redis_cluster_nodes"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def _started(tmp_path_factory: pytest.TempPathFactory, *, single: bool) -> RedisNodes:
    ensure_redis_server()
    nodes = RedisNodes(
        tmp_path_factory.mktemp("redis-single" if single else "redis-cluster"), single=single
    )
    nodes.start()
    return nodes


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNodes]:
    """The run's cluster as it is (a test that kills a node must ``heal()`` it)."""
    nodes = _started(tmp_path_factory, single=False)
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def redis_cluster(redis_cluster_nodes: RedisNodes) -> Iterator[RedisNodes]:
    """The cluster, healthy and empty; any node the test killed is restarted after it."""
    redis_cluster_nodes.heal()
    redis_cluster_nodes.flush()
    yield redis_cluster_nodes
    redis_cluster_nodes.heal()


@pytest.fixture(scope="session")
def _redis_single_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNodes]:
    nodes = _started(tmp_path_factory, single=True)
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def redis_single(_redis_single_node: RedisNodes) -> RedisNodes:
    """One plain Redis node (no cluster mode), empty."""
    _redis_single_node.flush()
    return _redis_single_node
