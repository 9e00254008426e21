"""Hostile input against a real server: thousands of generated requests, never a 5xx or a hang.

After every generated request the same connection asks a valid question and must get the right
answer, so a request that corrupts the server's state (or wedges the connection) fails the test.
"""

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsync.index.memory import index
from kvsync.model import EndpointId
from tests.integration.api_harness import MODEL, running_api, store

pytestmark = pytest.mark.integration

PROMPT = list(range(7, 7 + 16))
POD = EndpointId("default/vllm-0", 0)
BODY_LIMIT = 4096
TOKEN_LIMIT = 64
EXAMPLES = 600  # x 4 tests = 2,400 generated requests
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "",
    "application/json; charset=latin-1; x=\x7f",
]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    prefix_index = index.PrefixIndex()
    store(prefix_index, POD, PROMPT)
    with (
        running_api(
            prefix_index, max_body_bytes=BODY_LIMIT, max_query_tokens=TOKEN_LIMIT
        ) as harness,
        httpx.Client(base_url=harness.url, timeout=10) as http,
    ):
        yield http


def _check(http: httpx.Client, response: httpx.Response) -> None:
    """The hostile request got a 2xx/4xx JSON answer; a valid request right after is right."""
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        body = response.json()
        assert list(body) == ["error"]
        assert isinstance(body["error"], str)
    good = http.post("/v1/match", json={"model": MODEL, "token_ids": PROMPT})
    assert good.status_code == 200
    assert [(m["pod"], m["matched_blocks"]) for m in good.json()["matches"]] == [(POD.pod, 4)]


@SETTINGS
@given(body=st.binary(max_size=BODY_LIMIT + 64), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes(client: httpx.Client, body: bytes, content_type: str) -> None:
    response = client.post("/v1/match", content=body, headers={"content-type": content_type})
    _check(client, response)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=30,
)


@SETTINGS
@given(value=json_values)
def test_random_json(client: httpx.Client, value: Any) -> None:
    _check(client, client.post("/v1/match", json=value))


token_ids = st.lists(
    st.one_of(
        st.integers(min_value=0, max_value=2**32 - 1),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.text(max_size=4),
        st.none(),
    ),
    max_size=TOKEN_LIMIT + 8,
)
near_valid = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), st.text(max_size=30), st.integers(), st.none())},
    optional={
        "token_ids": st.one_of(token_ids, st.text(max_size=5), st.integers()),
        "lora_name": st.one_of(st.none(), st.text(max_size=10), st.integers()),
        "lora_id": st.one_of(st.none(), st.integers(min_value=-(2**70), max_value=2**70)),
        "cache_salt": st.one_of(st.none(), st.text(max_size=10), st.lists(st.integers())),
        "pods": st.one_of(st.none(), st.lists(st.text(max_size=20), max_size=4), st.text()),
        "extra": st.integers(),
    },
)


@SETTINGS
@given(value=near_valid)
def test_near_valid_bodies(client: httpx.Client, value: dict[str, Any]) -> None:
    _check(client, client.post("/v1/match", json=value))


FINITE = st.floats(allow_nan=False, allow_infinity=False)
near_valid_other = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just(MODEL), st.text(max_size=10), st.integers(), st.none()),
        "model_name": st.one_of(st.just(MODEL), st.text(max_size=10), st.integers(), st.none()),
        "token_ids": st.one_of(token_ids, st.text(max_size=5), st.integers()),
        "instance_id": st.one_of(st.integers(), st.text(max_size=8), FINITE, st.none()),
        "endpoint": st.one_of(st.just("tcp://127.0.0.1:1"), st.text(max_size=12), st.integers()),
        "dp_rank": st.one_of(st.integers(min_value=-5, max_value=5000), st.text(max_size=2)),
        "block_size": st.one_of(st.integers(min_value=-5, max_value=64), st.none()),
        "pod": st.one_of(st.text(max_size=10), st.integers()),
        "ttl_s": st.one_of(FINITE, st.integers(), st.text(max_size=3)),
        "tenant_id": st.one_of(st.text(max_size=6), st.none()),
    },
)


@SETTINGS
@given(
    path=st.sampled_from(["/query", "/register", "/unregister", "/v1/hint", "/v1/explain"]),
    value=near_valid_other,
)
def test_near_valid_bodies_on_the_other_routes(
    client: httpx.Client, path: str, value: dict[str, Any]
) -> None:
    response = client.post(path, json=value)
    assert response.status_code < 500, response.text
    assert list(response.json()) == ["error"] or response.status_code in (200, 201)
    _check(client, client.get("/livez"))


@SETTINGS
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/v1/match",
                "/v1/pods",
                "/v1/hint",
                "/v1/explain",
                "/livez",
                "/readyz",
                "/metrics",
                "/query",
                "/register",
                "/unregister",
                "/workers",
                "/health",
                "/",
            ]
        ),
        st.text(
            alphabet=st.characters(
                min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?#%"
            ),
            max_size=30,
        ).map(lambda p: "/" + p.lstrip("/")),  # "//x" would be an authority
    ),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)),
)
def test_any_method_path_and_content_type(
    client: httpx.Client, method: str, path: str, content_type: str, body: bytes
) -> None:
    response = client.request(method, path, content=body, headers={"content-type": content_type})
    assert response.status_code < 500, response.text
    _check(client, client.get("/livez"))


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any decoder recursion limit
        b'{"model": "' + "\U0001f600".encode() * 500 + b'", "token_ids": [1]}',
        b'{"model": "m", "token_ids": [' + b"1" * 3000 + b"]}",  # a 3000-digit integer
        b'{"model": "m", "token_ids": [1e999999]}',
        b'{"model": "m", "token_ids": [NaN, Infinity]}',
        b'\xef\xbb\xbf{"model": "m", "token_ids": [1]}',  # UTF-8 byte-order mark
        b'{"model": "\\u0000", "token_ids": []}',
    ],
)
def test_pathological_bodies(client: httpx.Client, body: bytes) -> None:
    big = running_api if len(body) > BODY_LIMIT else None
    if big is not None:  # too large for the shared server's limit: use a roomy one
        with running_api() as harness, httpx.Client(base_url=harness.url) as http:
            response = http.post(
                "/v1/match", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code in {400, 422}, response.text
        return
    response = client.post("/v1/match", content=body, headers={"content-type": "application/json"})
    _check(client, response)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/match HTTP/1.1\r\nhost: x\r\ncontent-type: application/json; x=\x7f\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nbad header line\r\n\r\n",
    ],
)
def test_a_request_the_http_parser_refuses_gets_a_json_400(request_bytes: bytes) -> None:
    with running_api() as harness, socket.create_connection(("127.0.0.1", harness.port)) as sock:
        sock.sendall(request_bytes)
        reply = b""
        while chunk := sock.recv(65536):  # the server closes the connection after its answer
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/json" in head.lower()
    assert list(json.loads(body)) == ["error"]
