"""Text and chat prompts on /v1/match: tokenized by the simulated pods' real /tokenize servers,
answered by the real daemon over real HTTP; tokenizer failures give the documented 5xx."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kvsync import metrics
from kvsync.daemon.config import Settings
from kvsync.daemon.runtime import Daemon
from kvsync.discovery.shards import owner
from kvsync.model import EndpointId
from kvsync.sim.engine_http import EngineReply, EngineRequest
from kvsync.sim.fleet import DEFAULT_ADAPTER, Fleet
from kvsync.sim.records import Request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = "sim-model"
TEXT = "kalo mine rusa tovi pedu mari sote luna zobe figo " * 12
CHAT = [
    {"role": "system", "content": "answer in one line " * 8},
    {"role": "user", "content": "what is kalo mine rusa tovi pedu " * 6},
]


@dataclass
class Served:
    fleet: Fleet
    daemon: Daemon
    http: httpx.Client


def poll(check: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling a condition with a deadline, not waiting for a socket


@pytest.fixture(name="served")
def _served() -> Iterator[Served]:
    with Fleet(pods=2, dp_sizes=(1,), engine_http=True, seed=5, adapter=None) as fleet:
        settings = Settings(
            discovery="static",
            endpoint=tuple(fleet.endpoints()),
            http_host="127.0.0.1",
            http_port=0,
            tokenize_timeout_seconds=1.0,
            log_level="error",
        )
        daemon = Daemon(settings)
        daemon.start()
        try:
            fleet.wait_for_subscribers()
            with httpx.Client(base_url=daemon.url, timeout=10) as http:
                yield Served(fleet, daemon, http)
        finally:
            daemon.stop(2.0)


def _stored(served: Served, endpoint: EndpointId, tokens: list[int]) -> None:
    """``endpoint`` caches ``tokens``; wait until kvsync answers for them."""
    served.fleet.submit(endpoint, Request(prompt=tuple(tokens)))
    served.fleet.flush()
    blocks = len(tokens) // served.fleet.block_size

    def held() -> bool:
        body = {"model": MODEL, "token_ids": tokens}
        matches = served.http.post("/v1/match", json=body).json()["matches"]
        return any(m["pod"] == endpoint.pod and m["matched_blocks"] == blocks for m in matches)

    poll(held, what="the stored prompt to be queryable")


def _without_meta(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "tokenized"}


def test_a_text_prompt_matches_exactly_what_its_tokens_match(served: Served) -> None:
    tokenizer = served.fleet.tokenizer
    assert tokenizer is not None
    tokens = tokenizer.encode(TEXT)
    pod = served.fleet.ids[0]
    _stored(served, pod, tokens)
    by_tokens = served.http.post("/v1/match", json={"model": MODEL, "token_ids": tokens}).json()
    cold = served.http.post("/v1/match", json={"model": MODEL, "prompt": TEXT})
    assert cold.status_code == 200, cold.text
    by_prompt = cold.json()
    assert by_prompt["token_count"] == len(tokens) == by_tokens["token_count"]
    assert by_prompt["matches"][0]["matched_blocks"] == len(tokens) // served.fleet.block_size
    for answer in (by_tokens, by_prompt):  # ages and engine loads move between the requests
        for match in answer["matches"]:
            match.pop("last_event_age_s")
            match.pop("load")  # the engine scraped between the two (or not yet before the first)
    assert _without_meta(by_prompt) == _without_meta(by_tokens)
    assert by_prompt["tokenized"]["cached"] is False
    assert by_prompt["tokenized"]["pod"] in {e.pod for e in served.fleet.ids}
    warm = served.http.post("/v1/match", json={"model": MODEL, "prompt": TEXT}).json()
    assert warm["tokenized"]["cached"] is True
    assert warm["matches"][0]["matched_blocks"] == by_prompt["matches"][0]["matched_blocks"]
    # the engine's /tokenize was asked once for this prompt: the second answer is the cache's
    asked = sum(served.fleet.engine_server(e.pod).hits["/tokenize"] for e in served.fleet.ids)
    assert asked == 1
    # without special tokens the BOS is gone: one token less, and a different first block
    bare = served.http.post(
        "/v1/match", json={"model": MODEL, "prompt": TEXT, "add_special_tokens": False}
    ).json()
    assert bare["token_count"] == len(tokens) - 1
    assert bare["matches"] == []


def test_a_chat_matches_exactly_what_its_tokens_match(served: Served) -> None:
    tokenizer = served.fleet.tokenizer
    assert tokenizer is not None
    tokens = tokenizer.chat(CHAT)
    pod = served.fleet.ids[1]
    _stored(served, pod, tokens)
    by_tokens = served.http.post("/v1/match", json={"model": MODEL, "token_ids": tokens}).json()
    by_chat = served.http.post("/v1/match", json={"model": MODEL, "messages": CHAT}).json()
    assert by_chat["token_count"] == len(tokens)
    assert [(m["pod"], m["matched_blocks"]) for m in by_chat["matches"]] == [
        (m["pod"], m["matched_blocks"]) for m in by_tokens["matches"]
    ]
    assert by_chat["matches"][0]["pod"] == pod.pod
    # the open-ended form is other tokens: the generation prompt is not there
    open_ended = served.http.post(
        "/v1/match",
        json={"model": MODEL, "messages": CHAT, "add_generation_prompt": False,
              "continue_final_message": True},
    ).json()  # fmt: skip
    assert open_ended["token_count"] == len(
        tokenizer.chat(CHAT, add_generation_prompt=False, continue_final_message=True)
    )


def _break_every_engine(served: Served, handler: Any) -> None:
    for endpoint in served.fleet.ids:
        served.fleet.engine_server(endpoint.pod).add_route("POST", "/tokenize", handler)


def test_an_engine_error_is_a_502_with_a_json_body(served: Served) -> None:
    def failing(_request: EngineRequest) -> EngineReply:
        return EngineReply.error(500, "CUDA out of memory", "InternalServerError")

    _break_every_engine(served, failing)
    answer = served.http.post("/v1/match", json={"model": MODEL, "prompt": "x y z"})
    assert answer.status_code == 502
    assert "CUDA out of memory" in answer.json()["error"]


def test_a_malformed_engine_answer_is_a_502(served: Served) -> None:
    def garbled(_request: EngineRequest) -> EngineReply:
        return EngineReply(200, b'{"tokens": ["a"]}')

    _break_every_engine(served, garbled)
    answer = served.http.post("/v1/match", json={"model": MODEL, "prompt": "x y z"})
    assert answer.status_code == 502
    assert "no token list" in answer.json()["error"]


def test_a_stalled_engine_is_a_504_within_the_budget_never_a_hang(served: Served) -> None:
    release = threading.Event()

    def stalled(_request: EngineRequest) -> EngineReply:
        release.wait(10)  # the engine hangs until the test is over
        return EngineReply.error(500, "late", "InternalServerError")

    _break_every_engine(served, stalled)
    try:
        started = time.monotonic()
        answer = served.http.post("/v1/match", json={"model": MODEL, "prompt": "x y z"})
        took = time.monotonic() - started
        assert answer.status_code == 504
        assert "within 1.0 s" in answer.json()["error"]
        assert took < 3.0
    finally:
        release.set()


def test_a_prompt_the_engine_refuses_is_a_422(served: Served) -> None:
    answer = served.http.post(
        "/v1/match", json={"model": MODEL, "messages": [{"role": "alien", "content": "x"}]}
    )
    assert answer.status_code == 422
    assert "refused" in answer.json()["error"]


def test_no_pod_of_the_model_is_a_503_and_unreachable_engines_too(served: Served) -> None:
    # no endpoint of that model, and no pod serves it as an adapter (each answers 404)
    unknown = served.http.post("/v1/match", json={"model": "other", "prompt": "x"})
    assert unknown.status_code == 503
    assert "no pod serves model 'other'" in unknown.json()["error"]
    for endpoint in served.fleet.ids:
        served.fleet.engine_server(endpoint.pod).close()
    gone = served.http.post("/v1/match", json={"model": MODEL, "prompt": "x"})
    assert gone.status_code == 503
    assert "no engine reachable" in gone.json()["error"]


def test_tokenize_metrics_count_latency_and_cache_hits(served: Served) -> None:
    registry = metrics.registry(served.daemon.metrics_snapshot)
    before = registry.get_sample_value("kvsync_tokenize_cache_total", {"result": "hit"}) or 0.0
    for _ in range(3):
        ok = served.http.post("/v1/match", json={"model": MODEL, "prompt": "kalo mine"})
        assert ok.status_code == 200
    hits = registry.get_sample_value("kvsync_tokenize_cache_total", {"result": "hit"}) or 0.0
    assert hits - before == 2
    scraped = served.http.get("/metrics").text
    assert "kvsync_tokenize_duration_seconds_count" in scraped
    assert 'kvsync_tokenize_requests_total{result="ok"}' in scraped


def test_a_model_naming_a_lora_adapter_matches_that_adapters_blocks() -> None:
    with Fleet(pods=2, dp_sizes=(1,), engine_http=True, seed=6) as fleet:  # adapter sql-adapter
        adapter = DEFAULT_ADAPTER
        settings = Settings(
            discovery="static",
            endpoint=tuple(fleet.endpoints()),
            http_host="127.0.0.1",
            http_port=0,
            log_level="error",
        )
        daemon = Daemon(settings)
        daemon.start()
        try:
            fleet.wait_for_subscribers()
            assert fleet.tokenizer is not None
            tokens = fleet.tokenizer.encode(TEXT)
            pod = fleet.ids[1]
            fleet.submit(pod, Request(prompt=tuple(tokens), adapter=adapter))
            fleet.flush()
            with httpx.Client(base_url=daemon.url, timeout=10) as http:
                by_adapter = {"model": adapter.name, "prompt": TEXT}

                def held() -> bool:
                    matches = http.post("/v1/match", json=by_adapter).json()["matches"]
                    return [m["pod"] for m in matches] == [pod.pod]

                poll(held, what="the adapter's blocks to be queryable")
                answer = http.post("/v1/match", json=by_adapter).json()
                assert (answer["model"], answer["lora_name"]) == (adapter.name, adapter.name)
                assert answer["matches"][0]["matched_blocks"] == len(tokens) // fleet.block_size
                explicit = {"model": MODEL, "lora_name": adapter.name, "prompt": TEXT}
                again = http.post("/v1/match", json=explicit).json()
                assert [m["matched_blocks"] for m in again["matches"]] == [
                    m["matched_blocks"] for m in answer["matches"]
                ]
                base = http.post("/v1/match", json={"model": MODEL, "prompt": TEXT}).json()
                assert base["matches"] == []  # the base model's context holds none of it
        finally:
            daemon.stop(2.0)


def test_a_pod_whose_engine_is_down_is_skipped_for_one_that_answers(served: Served) -> None:
    down, up = served.fleet.ids
    served.fleet.engine_server(down.pod).close()
    for n in range(4):  # new prompts: no cache; round robin would pick the dead pod half the time
        answer = served.http.post("/v1/match", json={"model": MODEL, "prompt": f"kalo {n}"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["tokenized"]["pod"] == up.pod
    assert served.fleet.engine_server(up.pod).hits["/tokenize"] == 4


def test_a_shard_tokenizes_with_pods_it_does_not_subscribe_to() -> None:
    with Fleet(pods=1, dp_sizes=(1,), engine_http=True, seed=8, adapter=None) as fleet:
        [endpoint] = fleet.endpoints()
        other = next(i for i in range(8) if i != owner(endpoint.id, 8))
        settings = Settings(
            discovery="static",
            endpoint=(endpoint,),
            http_host="127.0.0.1",
            http_port=0,
            log_level="error",
            shard_count=8,
            shard_index=other,  # this replica subscribes to nothing
        )
        daemon = Daemon(settings)
        daemon.start()
        try:
            with httpx.Client(base_url=daemon.url, timeout=10) as http:
                assert http.get("/v1/pods").json()["pods"] == []
                answer = http.post("/v1/match", json={"model": MODEL, "prompt": "kalo mine"})
                assert answer.status_code == 200, answer.text
                assert answer.json()["tokenized"]["pod"] == endpoint.id.pod
                # a hint may name a pod another shard subscribes to (the router does not know)
                hint = {"model": MODEL, "prompt": "kalo mine", "pod": endpoint.id.pod}
                assert http.post("/v1/hint", json=hint).status_code == 200
                nobody = {"model": MODEL, "prompt": "kalo mine", "pod": "nobody"}
                assert http.post("/v1/hint", json=nobody).status_code == 404
        finally:
            daemon.stop(2.0)


def test_a_prompt_over_the_token_limit_is_a_413_and_explain_takes_prompts() -> None:
    with Fleet(pods=1, dp_sizes=(1,), engine_http=True, seed=9, adapter=None) as fleet:
        settings = Settings(
            discovery="static",
            endpoint=tuple(fleet.endpoints()),
            http_host="127.0.0.1",
            http_port=0,
            log_level="error",
            max_query_tokens=64,
        )
        daemon = Daemon(settings)
        daemon.start()
        try:
            with httpx.Client(base_url=daemon.url, timeout=10) as http:
                long = http.post("/v1/match", json={"model": MODEL, "prompt": TEXT})
                assert long.status_code == 413
                assert "more than 64 token ids" in long.json()["error"]
                short = {"model": MODEL, "prompt": " ".join(TEXT.split()[:40])}  # 2+ blocks
                explained = http.post("/v1/explain", json=short)
                assert explained.status_code == 200, explained.text
                body = explained.json()
                assert body["tokenized"]["pod"] == fleet.ids[0].pod
                assert [e["why"]["reason"] for e in body["endpoints"]] == ["never_stored"]
        finally:
            daemon.stop(2.0)
