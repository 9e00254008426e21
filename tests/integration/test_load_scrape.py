"""The load thread against real HTTP servers: good, slow, garbage, failing and vanished pods."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kvsync.errors import LoadReason
from kvsync.load.scraper import LoadScraper, LoadSettings
from kvsync.load.table import EndpointLoad, LoadTable
from kvsync.model import Endpoint, EndpointId
from kvsync.sim.engine import Engine
from kvsync.sim.engine_metrics import EngineMetrics
from kvsync.sim.records import Request
from tests.integration.engine_servers import MetricsServer

MODEL = "llama"


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@contextmanager
def scraping(
    servers: dict[str, MetricsServer], ranks: int = 1, timeout_s: float = 0.3
) -> Iterator[LoadTable]:
    urls = {pod: server.url for pod, server in servers.items()}
    table = LoadTable(lambda endpoint: urls.get(endpoint.id.pod))
    for pod in servers:
        for rank in range(ranks):
            table.set_endpoint(Endpoint(EndpointId(pod, rank), MODEL, "tcp://127.0.0.1:1"))
    table.take_changes()  # entries exist from here on: the test reads them at once
    scraper = LoadScraper(table, LoadSettings(interval_s=0.05, timeout_s=timeout_s))
    scraper.start()
    try:
        yield table
    finally:
        assert scraper.stop(2.0), "the load thread did not stop"
        assert not scraper.failed.is_set()


def _state(table: LoadTable, pod: str, rank: int = 0) -> EndpointLoad:
    load = table.get(EndpointId(pod, rank))
    assert load is not None
    return load


def test_figures_per_rank_from_the_engines_own_state() -> None:
    engines = {0: Engine(num_blocks=64), 1: Engine(num_blocks=64)}
    metrics = EngineMetrics(model=MODEL, engines=engines)
    server = MetricsServer(metrics.render)
    try:
        with scraping({"pod": server}, ranks=2) as table:
            wait_for(lambda: _state(table, "pod", 1).state == "ok")
            engines[1].run(Request(tuple(range(70)), (1,)))
            wait_for(lambda: (_state(table, "pod", 1).engine or _state(table, "pod").engine)
                     .running == 1)  # type: ignore[union-attr]  # fmt: skip
            one = _state(table, "pod", 1).engine
            assert one is not None
            assert (one.running, one.kv_cache_usage, one.prefix_queries) == (
                1, engines[1].kv_cache_usage, 70)  # fmt: skip
            zero = _state(table, "pod", 0).engine
            assert zero is not None
            assert (zero.running, zero.prefix_queries) == (0, 0)
            requests = server.requests
            wait_for(lambda: server.requests >= requests + 3)
    finally:
        server.stop()


def test_hostile_pods_are_marked_and_good_ones_keep_being_read() -> None:
    engines = {0: Engine(num_blocks=64)}
    render = EngineMetrics(model=MODEL, engines=engines).render
    servers = {name: MetricsServer(render) for name in ("good", "hang", "bad")}
    try:
        with scraping(servers) as table:
            wait_for(lambda: all(_state(table, pod).state == "ok" for pod in servers))
            servers["hang"].mode = "hang"
            for mode, reason in (
                ("garbage", LoadReason.NOT_VLLM),
                ("status", LoadReason.HTTP_STATUS),
                ("close", LoadReason.UNREACHABLE),
            ):
                servers["bad"].mode = mode
                wait_for(lambda r=reason: _state(table, "bad").error == r)  # type: ignore[misc]
            wait_for(lambda: _state(table, "hang").error == LoadReason.TIMEOUT)
            hung = _state(table, "hang")
            assert hung.engine is not None  # the last good figures stay, aging
            assert hung.scraped_at is not None
            assert hung.scraped_at < time.monotonic()
            # The slow pod holds its slot until the timeout, never the others' scrapes.
            before = servers["good"].requests
            wait_for(lambda: servers["good"].requests >= before + 5)
            good = _state(table, "good")
            assert (good.state, good.failures) == ("ok", 0)
            assert good.scraped_at is not None
            assert time.monotonic() - good.scraped_at < 1.0
            servers["bad"].mode = "ok"
            wait_for(lambda: _state(table, "bad").state == "ok")
    finally:
        for server in servers.values():
            server.stop()


def test_a_pod_that_disappears_is_marked_unreachable() -> None:
    server = MetricsServer(EngineMetrics(model=MODEL, engines={0: Engine(num_blocks=8)}).render)
    with scraping({"gone": server}) as table:
        wait_for(lambda: _state(table, "gone").state == "ok")
        server.stop()
        wait_for(lambda: _state(table, "gone").error == LoadReason.UNREACHABLE)
        assert _state(table, "gone").failures >= 1
