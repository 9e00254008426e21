"""Load and audit end to end: the daemon in front of a simulated fleet serving vLLM's /metrics.

Every simulated pod serves a vLLM-shaped ``/metrics`` rendered from its engines' own state on its
engine HTTP port; the daemon scrapes it while it ingests the pods' KV events. Requests are routed
the way a router would: ask ``/v1/match``, send the request to an endpoint, report the engine's
``cached_tokens`` to ``/v1/feedback``.
"""

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kvsync.daemon.config import Settings
from kvsync.daemon.runtime import Daemon
from kvsync.model import EndpointId
from kvsync.sim import Fleet, SimQuery
from kvsync.sim.engine_http import EngineReply, EngineRequest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@dataclass
class Setup:
    fleet: Fleet
    daemon: Daemon
    http: httpx.Client

    def pods(self) -> dict[EndpointId, dict[str, Any]]:
        rows = self.http.get("/v1/pods").json()["pods"]
        return {EndpointId(row["pod"], row["dp_rank"]): row for row in rows}

    def caught_up(self) -> bool:
        applied = {e.endpoint.id: e.last_seq for e in self.daemon.ingest.snapshot().endpoints}
        return all(
            self.fleet.publisher(i).stats.next_seq - 1 in (-1, applied.get(i))
            for i in self.fleet.ids
        )

    def scraped_up_to_date(self) -> bool:
        """Every endpoint's load shows its engine's current counters."""
        rows = self.pods()
        for endpoint in self.fleet.ids:
            load = rows[endpoint]["load"]
            engine = self.fleet.engine(endpoint)
            if load is None or load["state"] != "ok":
                return False
            figures = self.daemon.load_table.get(endpoint)
            if figures is None or figures.engine is None:
                return False
            if figures.engine.prefix_queries != engine.prefix_queries:
                return False
        return True

    def settle(self) -> None:
        self.fleet.flush()
        wait_for(self.caught_up)
        wait_for(self.scraped_up_to_date)

    def route(self, query: SimQuery, rng: random.Random) -> dict[str, Any]:
        """Ask, send to the best endpoint (any when none holds a block), report."""
        wait_for(self.caught_up)
        answer = self.http.post("/v1/match", json=query.body()).json()
        if answer["matches"]:
            best = answer["matches"][0]
            endpoint = EndpointId(best["pod"], best["dp_rank"])
        else:
            endpoint = rng.choice(self.fleet.ids)
        cached = self.fleet.route(endpoint, query)
        report = {**query.body(), "pod": endpoint.pod, "dp_rank": endpoint.dp_rank,
                  "cached_tokens": cached}  # fmt: skip
        verdict = self.http.post("/v1/feedback", json=report)
        assert verdict.status_code == 200, verdict.text
        result: dict[str, Any] = verdict.json()
        return result


@contextmanager
def running(*, unpublished: int = 0) -> Iterator[Setup]:
    """A fleet with some traffic, then the daemon in front of it, scraping every 50 ms.

    ``unpublished``: that many requests also run on the first endpoint's engine before the
    daemon starts, their events never published (no sequence number skipped: no gap, so no
    replay and no reset either): the blocks they evict stay in kvsync's view."""
    with Fleet(pods=3, dp_sizes=(1, 2), num_blocks=128, eviction_jitter=0.0, seed=5,
               engine_http=True) as fleet:  # fmt: skip
        fleet.step(60)  # before the daemon: it warm-starts by replay, then scrapes
        if unpublished:
            fleet.run_unpublished(fleet.ids[0], requests=unpublished)
        settings = Settings(
            discovery="static",
            endpoint=tuple(fleet.endpoints()),
            http_host="127.0.0.1",
            http_port=0,
            load_interval_seconds=0.05,
            log_level="error",
        )
        daemon = Daemon(settings)
        daemon.start()
        try:
            fleet.wait_for_subscribers()
            with httpx.Client(base_url=daemon.url, timeout=5.0) as http:
                setup = Setup(fleet, daemon, http)
                setup.settle()
                yield setup
        finally:
            assert daemon.stop(5.0)


@pytest.fixture(name="setup")
def _setup() -> Iterator[Setup]:
    with running() as setup:
        yield setup


def test_load_shows_each_engines_own_figures(setup: Setup) -> None:
    setup.fleet.step(30)
    setup.settle()
    rows = setup.pods()
    for endpoint in setup.fleet.ids:
        engine = setup.fleet.engine(endpoint)
        load = rows[endpoint]["load"]
        assert load["running"] == engine.running_requests
        assert load["kv_cache_usage"] == pytest.approx(engine.kv_cache_usage)
        assert load["age_s"] < 2.0
    query = setup.fleet.sample_query()
    for match in setup.http.post("/v1/match", json=query.body()).json()["matches"]:
        assert match["load"]["state"] == "ok"


def test_the_audit_agrees_exactly_on_a_clean_run(setup: Setup) -> None:
    rng = random.Random(1)
    verdicts = [setup.route(setup.fleet.sample_query(), rng) for _ in range(40)]
    assert {v["outcome"] for v in verdicts} == {"exact"}
    assert any(v["predicted_tokens"] > 0 for v in verdicts)  # hits, not only misses
    setup.settle()
    rows = setup.pods()
    audited = [rows[e]["audit"] for e in setup.fleet.ids if rows[e]["audit"]]
    assert sum(a["requests"] for a in audited) == 40
    for audit in audited:
        assert (audit["over"], audit["under"], audit["unknown"]) == (0, 0, 0)
        assert audit["predicted_hit_rate"] == audit["reported_hit_rate"]
    metrics = setup.http.get("/metrics").text
    assert 'kvsync_audit_predictions_total{model="sim-model",outcome="exact"} ' in metrics


def test_events_dropped_without_replay_show_as_over_prediction() -> None:
    # The first endpoint's engine served 40 requests whose events were never published: the
    # removals of blocks it evicted for them never reached kvsync.
    with running(unpublished=40) as setup:
        fleet = setup.fleet
        victim = fleet.ids[0]

        def wrongly_believed(query: SimQuery) -> bool:
            wait_for(setup.caught_up)
            answer = setup.http.post("/v1/match", json=query.body()).json()  # what a router asks
            ours = [m for m in answer["matches"] if (m["pod"], m["dp_rank"]) == victim]
            truth = fleet.ground_truth(query).get(victim, 0)
            return bool(ours) and ours[0]["matched_blocks"] >= truth + 2

        verdicts = []
        for _ in range(300):
            query = fleet.sample_query()
            # Routing one request stores its blocks: a later prompt sharing them is no longer
            # wrongly believed, so each is checked again just before it is routed.
            if len(query.token_ids) < 3 * fleet.block_size or not wrongly_believed(query):
                continue
            cached = fleet.route(victim, query)
            report = {**query.body(), "pod": victim.pod, "dp_rank": victim.dp_rank,
                      "cached_tokens": cached}  # fmt: skip
            verdicts.append(setup.http.post("/v1/feedback", json=report).json())
            if len(verdicts) == 5:
                break
        assert len(verdicts) >= 3, "no prompt kvsync wrongly believes the victim holds"
        assert {v["outcome"] for v in verdicts} == {"over"}
        assert all(v["error_tokens"] >= fleet.block_size for v in verdicts)
        setup.settle()
        audit = setup.pods()[victim]["audit"]
        assert (audit["over"], audit["exact"]) == (len(verdicts), 0)
        # kvsync's view of the pod's hit rate is above the engine's own, from its counters
        assert audit["predicted_hit_rate"] > audit["engine_hit_rate"]
        assert audit["engine_hit_rate"] == audit["reported_hit_rate"]
        assert audit["drift"] > 0


def test_a_hanging_garbage_or_vanished_engine_never_blocks_ingest_or_lookups(
    setup: Setup,
) -> None:
    fleet = setup.fleet
    slow, bad, gone = (fleet.ids[0].pod, fleet.ids[1].pod, fleet.ids[-1].pod)
    release = threading.Event()

    def hang(_request: EngineRequest) -> EngineReply:
        release.wait(10.0)
        return EngineReply(200, b"", content_type="text/plain")

    fleet.engine_server(slow).add_route("GET", "/metrics", hang)
    fleet.engine_server(bad).add_route(
        "GET", "/metrics", lambda _r: EngineReply(200, b"<html>oops</html>", "text/html")
    )
    fleet.engine_server(gone).close()
    try:
        errors = {slow: "timeout", bad: "not_vllm", gone: "unreachable"}

        def marked() -> bool:
            rows = setup.pods()
            return all(
                rows[e]["load"]["error"] == errors[e.pod] for e in fleet.ids if e.pod in errors
            )

        wait_for(marked)
        started = time.monotonic()
        for _ in range(20):  # lookups answer at once while the slow engine holds its scrapes
            response = setup.http.post("/v1/match", json=fleet.sample_query().body())
            assert response.status_code == 200
        assert time.monotonic() - started < 2.0
        applied = setup.daemon.ingest.snapshot().batches
        fleet.step(20)
        fleet.flush()
        wait_for(setup.caught_up)
        assert setup.daemon.ingest.snapshot().batches > applied
        rows = setup.pods()
        for endpoint in fleet.ids:
            load = rows[endpoint]["load"]
            if endpoint.pod in errors:
                assert load["state"] == "failing"
                assert load["running"] is not None  # the last good figures stay, with their age
            else:
                assert load["state"] == "ok"
        metrics = setup.http.get("/metrics").text
        for reason in ("timeout", "not_vllm", "unreachable"):
            assert f'kvsync_load_scrapes_total{{result="{reason}"}}' in metrics
    finally:
        release.set()


def test_feedback_by_prompt_is_judged_against_the_answer_by_prompt(setup: Setup) -> None:
    # The router asked by text; its report names the same text: kvsync tokenizes it again (the
    # tokenize cache) and finds the answer it gave for those tokens.
    tokenizer = setup.fleet.tokenizer
    assert tokenizer is not None
    text = "kalo mine rusa tovi pedu mari sote luna zobe figo " * 8
    query = SimQuery(model=setup.fleet.model, token_ids=tuple(tokenizer.encode(text)))
    endpoint = setup.fleet.ids[0]
    verdicts = []
    for _ in range(2):  # a miss, then a hit of everything vLLM can reuse
        setup.fleet.flush()  # the last route's events are published, not just queued
        wait_for(setup.caught_up)
        asked = setup.http.post("/v1/match", json={"model": setup.fleet.model, "prompt": text})
        assert asked.status_code == 200, asked.text
        cached = setup.fleet.route(endpoint, query)
        report = {"model": setup.fleet.model, "prompt": text, "pod": endpoint.pod,
                  "dp_rank": endpoint.dp_rank, "cached_tokens": cached}  # fmt: skip
        verdict = setup.http.post("/v1/feedback", json=report)
        assert verdict.status_code == 200, verdict.text
        verdicts.append(verdict.json())
    block = setup.fleet.block_size
    reusable = (len(query.token_ids) - 1) // block * block
    assert [(v["outcome"], v["predicted_tokens"]) for v in verdicts] == [
        ("exact", 0), ("exact", reusable)]  # fmt: skip
