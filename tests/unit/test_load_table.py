"""The load table: figures with their time, failures that keep them, the engine's hit rate."""

from kvsync.errors import LoadReason
from kvsync.load.table import HIT_RATE_WINDOW_S, LoadTable
from kvsync.load.values import EngineLoad
from kvsync.model import Endpoint, EndpointId

A = EndpointId("default/vllm-a", 0)
B = EndpointId("default/vllm-b", 0)


def _endpoint(endpoint_id: EndpointId, engine: str | None = "http://10.0.0.1:8000") -> Endpoint:
    return Endpoint(endpoint_id, "llama", "tcp://10.0.0.1:5557", generation=engine or "")


def _table() -> LoadTable:
    table = LoadTable(lambda e: e.generation or None)  # the engine address rides in generation
    table.set_endpoint(_endpoint(A))
    table.set_endpoint(_endpoint(B, engine=None))
    assert table.take_changes()
    return table


def _figures(queries: float, hits: float, running: float = 1) -> EngineLoad:
    return EngineLoad(running=running, waiting=0, kv_cache_usage=0.5, prefix_queries=queries,
                      prefix_hits=hits)  # fmt: skip


def test_an_endpoint_without_engine_address_is_not_scraped() -> None:
    table = _table()
    assert table.get(B) is None
    assert [e.id for e in table.endpoints()] == [A]
    assert table.endpoint_ids("llama") == [A]
    assert table.get(A) is not None
    assert table.get(A).state == "pending"  # type: ignore[union-attr]


def test_a_failure_keeps_the_last_figures_and_their_time() -> None:
    table = _table()
    table.record(A, _figures(100, 50), now=10.0)
    table.record_failure(A, LoadReason.TIMEOUT)
    table.record_failure(A, LoadReason.UNREACHABLE)
    load = table.get(A)
    assert load is not None
    assert (load.state, load.error, load.failures, load.scraped_at) == (
        "failing", LoadReason.UNREACHABLE, 2, 10.0)  # fmt: skip
    assert load.engine == _figures(100, 50)
    table.record(A, _figures(100, 50), now=11.0)
    assert (table.get(A).state, table.get(A).failures) == ("ok", 0)  # type: ignore[union-attr]


def test_hit_rate_is_the_engines_over_the_window_and_restarts_with_its_counters() -> None:
    table = _table()
    table.record(A, _figures(0, 0), now=0.0)
    assert table.get(A).prefix_hit_rate is None  # type: ignore[union-attr]  # nothing asked yet
    table.record(A, _figures(1000, 250), now=1.0)
    assert table.get(A).prefix_hit_rate == 0.25  # type: ignore[union-attr]
    # A minute later the old samples are out of the window: only the recent rate counts.
    table.record(A, _figures(2000, 1250), now=1.0 + HIT_RATE_WINDOW_S)
    table.record(A, _figures(3000, 2250), now=2.0 + HIT_RATE_WINDOW_S)
    assert table.get(A).prefix_hit_rate == 1.0  # type: ignore[union-attr]
    counters = table.counters(A)
    assert counters is not None
    assert (counters.epoch, counters.queries, counters.hits) == (0.0, 3000, 2250)
    # The engine restarted: its counters went back; a new epoch and a new window begin.
    table.record(A, _figures(100, 0), now=100.0)
    counters = table.counters(A)
    assert counters is not None
    assert (counters.epoch, counters.queries, counters.hits) == (100.0, 0, 0)
    assert table.get(A).prefix_hit_rate is None  # type: ignore[union-attr]


def test_removed_endpoint_is_forgotten_even_with_a_scrape_in_flight() -> None:
    table = _table()
    table.record(A, _figures(10, 5), now=1.0)
    table.remove_endpoint(A)
    table.take_changes()
    table.record(A, _figures(20, 5), now=2.0)  # the scrape that was in flight
    table.record_failure(A, LoadReason.TIMEOUT)
    assert table.get(A) is None
    assert table.counters(A) is None
    assert table.endpoint_ids("llama") == []


def test_a_changed_endpoint_starts_afresh() -> None:
    table = _table()
    table.record(A, _figures(10, 5), now=1.0)
    table.set_endpoint(_endpoint(A, engine="http://10.0.0.9:8000"))
    table.take_changes()
    assert table.get(A).state == "pending"  # type: ignore[union-attr]
    assert table.counters(A) is None
    table.set_endpoint(_endpoint(A, engine="http://10.0.0.9:8000"))  # the same again: no reset
    table.record(A, _figures(10, 5), now=2.0)
    table.take_changes()
    assert table.get(A).state == "ok"  # type: ignore[union-attr]
