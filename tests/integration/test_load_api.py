"""Load in every answer, load-weighted answers, and POST /v1/feedback over a real server."""

import re
import time
from collections.abc import Iterator

import httpx
import pytest

from kvsync import metrics
from kvsync.audit.ledger import Audit
from kvsync.audit.memo import AnswerMemo
from kvsync.daemon.load_views import TableViews
from kvsync.errors import LoadReason
from kvsync.index.memory import index
from kvsync.load.table import LoadTable
from kvsync.load.values import EngineLoad
from kvsync.model import Endpoint, EndpointId
from tests.integration.api_harness import BLOCK, MODEL, running_api, store

A = EndpointId("default/vllm-a", 0)
B = EndpointId("default/vllm-b", 0)
C = EndpointId("default/vllm-c", 0)  # serves the model, holds nothing
D = EndpointId("default/vllm-d", 0)  # serves the model, its /metrics does not answer
TOKENS = list(range(1, 3 * BLOCK + 1))
API_TOKEN = "s3cret"  # noqa: S105  # a test token


def _table() -> LoadTable:
    table = LoadTable(lambda endpoint: f"http://{endpoint.id.pod}:8000")
    for endpoint in (A, B, C, D):
        table.set_endpoint(Endpoint(endpoint, MODEL, "tcp://127.0.0.1:5557"))
    table.take_changes()
    now = time.monotonic()
    table.record(A, EngineLoad(running=10, waiting=6, kv_cache_usage=0.9), now)
    table.record(B, EngineLoad(running=1, waiting=0, kv_cache_usage=0.2), now)
    table.record(C, EngineLoad(running=0, waiting=0, kv_cache_usage=0.0), now)
    table.record(D, EngineLoad(running=0, waiting=0, kv_cache_usage=0.0), now - 30)
    table.record_failure(D, LoadReason.TIMEOUT)
    return table


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    prefix_index = index.PrefixIndex()
    store(prefix_index, A, TOKENS)
    store(prefix_index, B, TOKENS[:BLOCK], first_hash=100)
    audit = Audit(AnswerMemo(), on_verdict=metrics.observe_verdict)
    with (
        running_api(
            prefix_index, load=TableViews(_table()), audit=audit, max_query_tokens=1000
        ) as harness,
        httpx.Client(base_url=harness.url) as http,
    ):
        yield http


def test_every_match_carries_its_endpoints_load_and_age(client: httpx.Client) -> None:
    body = client.post("/v1/match", json={"model": MODEL, "token_ids": TOKENS}).json()
    assert [(m["pod"], m["score"]) for m in body["matches"]] == [(A.pod, 3.0), (B.pod, 1.0)]
    load = body["matches"][0]["load"]
    assert load["state"] == "ok"
    assert (load["running"], load["waiting"], load["kv_cache_usage"]) == (10, 6, 0.9)
    assert 0 <= load["age_s"] < 5
    assert load["error"] is None


def test_load_weight_ranks_every_endpoint_of_the_model(client: httpx.Client) -> None:
    def ranked(weight: float) -> list[tuple[str, float]]:
        request = {"model": MODEL, "token_ids": TOKENS, "load_weight": weight}
        body = client.post("/v1/match", json=request).json()
        return [(m["pod"], m["score"]) for m in body["matches"]]

    # cache: A 3/3, B 1/3, C and D 0; load: queue over the busiest (A's 16) averaged with the
    # KV-cache usage: A (1 + 0.9) / 2, B (1/16 + 0.2) / 2, C 0; D's last scrape failed: 1.
    assert ranked(0.0) == [(A.pod, 1.0), (B.pod, 0.333333), (C.pod, 0.0), (D.pod, 0.0)]
    assert ranked(0.5) == [(B.pod, 0.601042), (A.pod, 0.525), (C.pod, 0.5), (D.pod, 0.0)]
    assert ranked(1.0) == [(C.pod, 1.0), (B.pod, 0.86875), (A.pod, 0.05), (D.pod, 0.0)]
    restricted = {"model": MODEL, "token_ids": TOKENS, "load_weight": 1.0, "pods": [A.pod]}
    body = client.post("/v1/match", json=restricted).json()
    assert [m["pod"] for m in body["matches"]] == [A.pod]


@pytest.mark.parametrize("weight", [-0.1, 1.5, "0.5", True])
def test_load_weight_out_of_range_is_a_422(client: httpx.Client, weight: object) -> None:
    request = {"model": MODEL, "token_ids": TOKENS, "load_weight": weight}
    response = client.post("/v1/match", json=request)
    assert response.status_code == 422, response.text


def _feedback(pod: str, cached: int, tokens: list[int] = TOKENS) -> dict[str, object]:
    return {"model": MODEL, "token_ids": tokens, "pod": pod, "dp_rank": 0,
            "cached_tokens": cached}  # fmt: skip


def test_feedback_judges_the_answer_given_when_the_router_asked(client: httpx.Client) -> None:
    tokens = [*TOKENS, 7, 7]  # 3 full blocks and a partial one: all 3 are reusable
    client.post("/v1/match", json={"model": MODEL, "token_ids": tokens})
    exact = client.post("/v1/feedback", json=_feedback(A.pod, 3 * BLOCK, tokens))
    assert exact.status_code == 200, exact.text
    assert exact.json() == {"outcome": "exact", "predicted_tokens": 12, "cached_tokens": 12,
                            "error_tokens": 0}  # fmt: skip
    over = client.post("/v1/feedback", json=_feedback(B.pod, 0, tokens)).json()
    assert (over["outcome"], over["error_tokens"]) == ("over", 4)
    under = client.post("/v1/feedback", json=_feedback(C.pod, 8, tokens)).json()
    assert (under["outcome"], under["error_tokens"]) == ("under", -8)
    unknown = client.post("/v1/feedback", json=_feedback(A.pod, 4, tokens[:-3])).json()
    assert unknown == {"outcome": "unknown", "predicted_tokens": None, "cached_tokens": 4,
                       "error_tokens": None}  # fmt: skip
    text = client.get("/metrics").text
    assert f'kvsync_audit_predictions_total{{model="{MODEL}",outcome="exact"}}' in text
    assert f'kvsync_audit_error_tokens_bucket{{le="0.0",model="{MODEL}"}}' in text


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"", "application/json", 400),
        (b"{not json", "application/json", 400),
        (b'{"model": "m"}', "application/json", 422),
        (b'{"model": "m", "token_ids": [1], "pod": "p", "dp_rank": 0, "cached_tokens": -1}',
         "application/json", 422),
        (b'{"model": "m", "token_ids": [1], "pod": "p", "dp_rank": 0, "cached_tokens": "4"}',
         "application/json", 422),
        ((b'{"model": "m", "token_ids": [1], "pod": "p", "dp_rank": 0, "cached_tokens": 4, '
          b'"x": 1}'), "application/json", 422),
        (b'{"model": "m", "token_ids": [-1], "pod": "p", "dp_rank": 0, "cached_tokens": 4}',
         "application/json", 422),
        (b'{"model": "m", "token_ids": [1], "pod": "p", "dp_rank": 0, "cached_tokens": 4}',
         "text/plain", 415),
        ((b'{"model": "m", "token_ids": [' + b"1," * 1000 + b'1], "pod": "p", "dp_rank": 0, '
          b'"cached_tokens": 4}'), "application/json", 413),
    ],
)  # fmt: skip
def test_bad_feedback_is_a_counted_4xx(
    client: httpx.Client, body: bytes, content_type: str, status: int
) -> None:
    response = client.post("/v1/feedback", content=body, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    counted = re.search(r'kvsync_api_requests_total\{result="\w+",route="feedback"\} [1-9]',
                        client.get("/metrics").text)  # fmt: skip
    assert counted is not None


def test_feedback_needs_the_token_when_the_server_has_one() -> None:
    with running_api(token=API_TOKEN) as harness, httpx.Client(base_url=harness.url) as http:
        denied = http.post("/v1/feedback", json=_feedback(A.pod, 0))
        assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Bearer")
        allowed = http.post("/v1/feedback", json=_feedback(A.pod, 0),
                            headers={"authorization": f"Bearer {API_TOKEN}"})  # fmt: skip
        assert allowed.json()["outcome"] == "unknown"
