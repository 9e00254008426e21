"""HTTP API contract against a real uvicorn server on 127.0.0.1: every route and every error."""

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kvsync import metrics
from kvsync.index.memory import index
from kvsync.model import EndpointId
from tests.integration.api_harness import BLOCK, MODEL, pod_status, running_api, store

pytestmark = pytest.mark.integration

A0 = EndpointId("default/vllm-a", 0)
B0 = EndpointId("default/vllm-b", 0)
B1 = EndpointId("default/vllm-b", 1)
C0 = EndpointId("default/vllm-c", 0)
PROMPT = list(range(100, 112))  # 3 blocks of 4
TOKEN = "s3cret"  # noqa: S105  # a test token


def _populated() -> index.PrefixIndex:
    prefix_index = index.PrefixIndex()
    store(prefix_index, A0, PROMPT)  # all 3 blocks
    store(prefix_index, B1, PROMPT[:8], first_hash=100)  # 2 blocks
    store(prefix_index, C0, PROMPT[:4], medium="CPU", first_hash=200)  # 1 block, on CPU
    return prefix_index


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    pods = [pod_status(A0, 3), pod_status(B0, 0), pod_status(B1, 2)]
    with (
        running_api(_populated(), pods=pods, ages={A0: 0.25, B1: 1.5}) as harness,
        httpx.Client(base_url=harness.url, timeout=10) as http,
    ):
        yield http


def _match(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/match", json={"model": MODEL, "token_ids": PROMPT, **body})


def test_match_answers_every_holder_best_first(client: httpx.Client) -> None:
    response = _match(client, token_ids=[*PROMPT, 1, 2])  # a partial tail is ignored
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model": MODEL,
        "lora_name": None,
        "block_size": BLOCK,
        "query_blocks": 3,
        "matches": [
            {"pod": "default/vllm-a", "dp_rank": 0, "matched_blocks": 3, "matched_tokens": 12,
             "percent": 100, "score": 3.0, "by_medium": {"GPU": 3}, "last_event_age_s": 0.25,
             "speculative_blocks": 0, "load": None},
            {"pod": "default/vllm-b", "dp_rank": 1, "matched_blocks": 2, "matched_tokens": 8,
             "percent": 66, "score": 2.0, "by_medium": {"GPU": 2}, "last_event_age_s": 1.5,
             "speculative_blocks": 0, "load": None},
            {"pod": "default/vllm-c", "dp_rank": 0, "matched_blocks": 1, "matched_tokens": 4,
             "percent": 33, "score": 0.8, "by_medium": {"CPU": 1}, "last_event_age_s": None,
             "speculative_blocks": 0, "load": None},
        ],
        "token_count": 14,
        "tokenized": None,
    }  # fmt: skip


def test_match_stops_at_the_first_block_not_held(client: httpx.Client) -> None:
    diverging = [*PROMPT[:4], 9, 9, 9, 9, *PROMPT[8:]]
    body = _match(client, token_ids=diverging).json()
    assert [(m["pod"], m["matched_blocks"]) for m in body["matches"]] == [
        ("default/vllm-a", 1),
        ("default/vllm-b", 1),
        ("default/vllm-c", 1),
    ]


def test_pods_filter_keeps_every_rank_of_the_named_pods(client: httpx.Client) -> None:
    body = _match(client, pods=["default/vllm-b", "no/such-pod"]).json()
    assert [(m["pod"], m["dp_rank"]) for m in body["matches"]] == [("default/vllm-b", 1)]
    assert _match(client, pods=[]).json()["matches"] == []


def test_unknown_model_or_adapter_is_an_empty_answer(client: httpx.Client) -> None:
    unknown = _match(client, model="other").json()
    assert unknown == {"model": "other", "lora_name": None, "block_size": 16,
                       "query_blocks": 0, "matches": [], "token_count": 12,
                       "tokenized": None}  # fmt: skip
    adapter = _match(client, lora_name="sql-lora").json()
    assert (adapter["lora_name"], adapter["matches"]) == ("sql-lora", [])


def test_salted_query_does_not_match_plain_blocks(client: httpx.Client) -> None:
    assert _match(client, cache_salt="tenant-1").json()["matches"] == []


def test_query_shorter_than_a_block(client: httpx.Client) -> None:
    body = _match(client, token_ids=PROMPT[:3]).json()
    assert (body["query_blocks"], body["matches"]) == (0, [])
    assert _match(client, token_ids=[]).json()["query_blocks"] == 0


def test_mixed_block_sizes_answer_each_endpoint_in_its_own() -> None:
    prefix_index = index.PrefixIndex()
    tokens = list(range(500, 516))
    store(prefix_index, A0, tokens)  # 4 blocks of 4
    store(prefix_index, B0, tokens[:8], block_size=8, first_hash=50)  # 1 block of 8
    with running_api(prefix_index) as harness, httpx.Client(base_url=harness.url) as http:
        body = http.post("/v1/match", json={"model": MODEL, "token_ids": tokens}).json()
    found = {m["pod"]: m for m in body["matches"]}
    assert (found[A0.pod]["matched_tokens"], found[A0.pod]["percent"]) == (16, 100)
    assert (found[B0.pod]["matched_blocks"], found[B0.pod]["matched_tokens"]) == (1, 8)
    assert found[B0.pod]["percent"] == 50  # 1 of the query's 2 blocks of 8


def test_pods_lists_endpoints_in_the_contract_shape(client: httpx.Client) -> None:
    response = client.get("/v1/pods")
    assert response.status_code == 200
    pods = response.json()["pods"]
    assert [p["pod"] for p in pods] == ["default/vllm-a", "default/vllm-b", "default/vllm-b"]
    assert set(pods[0]) >= {"pod", "dp_rank", "model", "pub", "replay", "state", "last_seq",
                            "last_event_age_s", "blocks", "gaps", "replays", "resets",
                            "decode_errors", "duplicates", "reset_reasons"}  # fmt: skip
    assert (pods[2]["dp_rank"], pods[2]["blocks"], pods[2]["state"]) == (1, 2, "live")
    assert response.json()["shard"] == {"index": 0, "count": 1, "skipped_endpoints": 0}


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"]
    return str(body["error"])


def test_empty_body_is_400(client: httpx.Client) -> None:
    message = _error(client.post("/v1/match", headers={"content-type": "application/json"}), 400)
    assert message == "empty body"


@pytest.mark.parametrize("body", [b"{", b"nope", b'{"model": "m",}', b"\xff\xfe", b'"\\ud800'])
def test_malformed_json_is_400(client: httpx.Client, body: bytes) -> None:
    response = client.post("/v1/match", content=body, headers={"content-type": "application/json"})
    assert _error(response, 400).startswith("malformed JSON")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([1, 2], "Expected `object`"),
        ("text", "Expected `object`"),
        ({"token_ids": [1]}, "missing required field `model`"),
        ({"model": "m"}, "give one of token_ids, prompt or messages"),
        ({"model": "m", "token_ids": None}, "give one of token_ids, prompt or messages"),
        ({"model": "m", "token_ids": [1], "prompt": "x"}, "give one of token_ids, prompt"),
        ({"model": "m", "prompt": "x", "messages": []}, "give one of token_ids, prompt"),
        ({"model": "m", "messages": []}, "messages is empty"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages[0] has no string role"),
        ({"model": "m", "prompt": 3}, "Expected `str | null`"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "continue_final_message": True,
            },
            "exclude each other",
        ),
        ({"model": "m", "token_ids": [1], "extra": 1}, "unknown field `extra`"),
        ({"model": "m", "token_ids": ["1"]}, "Expected `int`, got `str`"),
        ({"model": "m", "token_ids": [1.0]}, "Expected `int`, got `float`"),
        ({"model": "m", "token_ids": [True]}, "Expected `int`, got `bool`"),
        ({"model": "m", "token_ids": [-1]}, ">= 0"),
        ({"model": "m", "token_ids": [2**32]}, "<= 4294967295"),
        ({"model": "m", "token_ids": [10**30]}, "<= 4294967295"),
        ({"model": "m", "token_ids": "123"}, "Expected `array | null`"),
        ({"model": 7, "token_ids": [1]}, "Expected `str`"),
        ({"model": "m", "token_ids": [1], "lora_id": "3"}, "Expected `int | null`"),
        ({"model": "m", "token_ids": [1], "pods": "vllm-a"}, "Expected `array | null`"),
    ],
)
def test_wrong_shape_is_422(client: httpx.Client, body: object, fragment: str) -> None:
    assert fragment in _error(client.post("/v1/match", json=body), 422)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_415(client: httpx.Client, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/v1/match", content=b'{"model": "m", "token_ids": []}', headers=headers)
    assert "application/json" in _error(response, 415)


def test_json_with_charset_is_accepted(client: httpx.Client) -> None:
    response = client.post(
        "/v1/match",
        content=b'{"model": "m", "token_ids": []}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200


def test_unknown_path_is_404_and_wrong_method_405(client: httpx.Client) -> None:
    assert "/v2/match" in _error(client.post("/v2/match", json={}), 404)
    assert "/v1/match" in _error(client.get("/v1/match"), 405)
    assert _error(client.post("/livez"), 405)
    assert _error(client.delete("/v1/pods"), 405)


def test_too_many_token_ids_is_413() -> None:
    with running_api(max_query_tokens=8) as harness, httpx.Client(base_url=harness.url) as http:
        ok = http.post("/v1/match", json={"model": MODEL, "token_ids": list(range(8))})
        assert ok.status_code == 200
        over = http.post("/v1/match", json={"model": MODEL, "token_ids": list(range(9))})
        assert "more than 8 token ids" in _error(over, 413)


def test_body_over_the_limit_is_413_while_streaming() -> None:
    chunk = b" " * 512

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"model": "m", "token_ids": []'
        for _ in range(8):
            yield chunk

    with running_api(max_body_bytes=1024) as harness, httpx.Client(base_url=harness.url) as http:
        response = http.post(
            "/v1/match", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "1024 bytes" in _error(response, 413)
        after = http.post("/v1/match", json={"model": MODEL, "token_ids": [1, 2]})
        assert after.status_code == 200


def _read_response(raw: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += raw.recv(65536) or b"<closed>"
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        chunk = raw.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head, body


def test_declared_length_over_the_limit_is_413_before_any_body_is_sent() -> None:
    with running_api(max_body_bytes=1024) as harness:
        with socket.create_connection(("127.0.0.1", harness.port), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/match HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 999999999\r\n\r\n"
            )
            head, body = _read_response(raw)  # answered although the body never comes
        assert head.startswith(b"HTTP/1.1 413")
        assert json.loads(body) == {"error": "body over the limit of 1024 bytes"}


def test_a_client_stalling_mid_body_gets_408_not_a_hung_request() -> None:
    with running_api(body_timeout_s=0.5) as harness:
        with socket.create_connection(("127.0.0.1", harness.port), timeout=10) as raw:
            raw.sendall(
                b"POST /v1/match HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"model": '
            )
            head, body = _read_response(raw)
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body) == {"error": "body not received within 0.5 s"}


def test_probes(client: httpx.Client) -> None:
    assert client.get("/livez").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_probes_report_503_with_a_reason() -> None:
    with running_api() as harness, httpx.Client(base_url=harness.url) as http:
        harness.health.is_ready = False
        harness.health.reason = "stopping"
        assert _error(http.get("/readyz"), 503) == "stopping"
        harness.health.is_live = False
        assert "ingest" in _error(http.get("/livez"), 503)


def test_metrics_include_every_kvsync_metric() -> None:
    snapshot = metrics.Snapshot(
        batches=5,
        events={"stored": 4, "removed": 1},
        blocks={"stored": 12},
        decode_errors={"payload": 2},
        sequence_gaps=1,
        replays={"ok": 1},
        resets={"restart": 1},
        endpoints={"live": 3},
        index_blocks=6,
        index_contexts=1,
        index_keys=3,
        evictions={"ttl": 7},
        shard_index=1,
        shard_count=3,
        endpoints_skipped=4,
    )
    metrics.INFORMER_RELISTS.inc(0)
    metrics.INFORMER_ERRORS.labels(reason="gone").inc(0)
    metrics.EVENT_LAG.observe(0.01)
    with running_api(snapshot=snapshot) as harness, httpx.Client(base_url=harness.url) as http:
        http.post("/v1/match", json={"model": MODEL, "token_ids": PROMPT})
        http.post("/v1/match", content=b"{", headers={"content-type": "application/json"})
        response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in [
        'kvsync_match_requests_total{result="ok"}',
        'kvsync_match_requests_total{result="bad_json"}',
        "kvsync_match_duration_seconds_count",
        'kvsync_index_lock_wait_seconds_count{side="http"}',
        'kvsync_index_lock_hold_seconds_count{side="http"}',
        "kvsync_event_lag_seconds_count",
        "kvsync_informer_relists_total",
        'kvsync_informer_errors_total{reason="gone"}',
        "kvsync_batches_applied_total 5.0",
        'kvsync_events_applied_total{type="stored"} 4.0',
        'kvsync_blocks_applied_total{type="stored"} 12.0',
        'kvsync_decode_errors_total{reason="payload"} 2.0',
        "kvsync_sequence_gaps_total 1.0",
        'kvsync_replays_total{result="ok"} 1.0',
        'kvsync_endpoint_resets_total{reason="restart"} 1.0',
        'kvsync_endpoints{state="live"} 3.0',
        'kvsync_endpoints{state="replaying"} 0.0',
        "kvsync_index_blocks 6.0",
        "kvsync_index_contexts 1.0",
        "kvsync_index_keys 3.0",
        'kvsync_index_evictions_total{reason="ttl"} 7.0',
        "kvsync_shard_index 1.0",
        "kvsync_shard_count 3.0",
        "kvsync_endpoints_skipped 4.0",
    ]:
        assert line in text, line


def test_openapi_document_describes_the_api(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/v1/match", "/v1/pods", "/v1/hint", "/v1/feedback", "/v1/explain", "/livez", "/readyz",
        "/metrics", "/query", "/register", "/unregister", "/workers", "/health",
    }  # fmt: skip
    request = document["components"]["schemas"]["MatchRequest"]
    assert set(request["required"]) == {"model"}
    assert {"token_ids", "prompt", "messages", "add_generation_prompt"} <= set(
        request["properties"]
    )
    assert request["properties"]["token_ids"]["anyOf"][0]["items"] == {
        "type": "integer", "minimum": 0, "exclusiveMaximum": 2**32
    }  # fmt: skip
    response = document["components"]["schemas"]["MatchResponse"]
    assert set(response["properties"]) == {
        "model", "lora_name", "block_size", "query_blocks", "matches", "token_count", "tokenized"
    }  # fmt: skip


@pytest.fixture(scope="module")
def guarded() -> Iterator[httpx.Client]:
    with (
        running_api(_populated(), token=TOKEN) as harness,
        httpx.Client(base_url=harness.url) as http,
    ):
        yield http


def test_token_v1_needs_the_token(guarded: httpx.Client) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
        response = guarded.post(
            "/v1/match", json={"model": MODEL, "token_ids": PROMPT}, headers=headers
        )
        assert _error(response, 401) == "missing or wrong bearer token"
        assert response.headers["www-authenticate"] == "Bearer"
        assert _error(guarded.get("/v1/pods", headers=headers), 401)


def test_token_right_one_gets_answers(guarded: httpx.Client) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    response = guarded.post("/v1/match", json={"model": MODEL, "token_ids": PROMPT}, headers=auth)
    assert response.json()["matches"][0]["matched_blocks"] == 3
    assert guarded.get("/v1/pods", headers=auth).json()["pods"] == []


def test_token_not_needed_by_probes_metrics_openapi(guarded: httpx.Client) -> None:
    for path in ("/livez", "/readyz", "/metrics", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path
