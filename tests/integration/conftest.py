"""The ``index_backend`` fixture: a test module that uses it runs each test once per backend."""

from collections.abc import Iterator

import pytest

from kvsync.index.backend import BackendSettings, RedisSettings, open_backend
from tests.integration import ingest_harness


@pytest.fixture(params=["memory", "redis"])
def index_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Which backend ``ingest_harness.running_daemon`` opens (the Redis one on the test
    cluster, emptied per test). A test marked ``memory_only`` skips the Redis run."""
    name: str = request.param
    if name == "redis":
        if request.node.get_closest_marker("memory_only") is not None:
            pytest.skip("about the memory backend itself")
        url = request.getfixturevalue("redis_cluster").url
        settings = BackendSettings(redis=RedisSettings(url=url))
        ingest_harness.backend_factory = lambda: open_backend("redis", settings)
    try:
        yield name
    finally:
        ingest_harness.backend_factory = None
