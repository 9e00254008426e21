"""The simulated pods' engine HTTP server: vLLM's /tokenize shapes over a real socket, routes."""

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from kvsync.discovery.endpoints import parse_endpoint_spec
from kvsync.sim.engine_http import EngineHttpServer, EngineReply, EngineRequest
from kvsync.sim.fleet import Fleet
from kvsync.sim.tokenizer import BOS, SimTokenizer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer() -> SimTokenizer:
    return SimTokenizer.trained(seed=3)


@pytest.fixture(name="server")
def _server(tokenizer: SimTokenizer) -> Iterator[EngineHttpServer]:
    with EngineHttpServer(
        model="m", tokenizer=tokenizer, adapters=("sql",), max_model_len=512
    ) as s:
        yield s


def call(server: EngineHttpServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, payload, {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_completion_form_answers_vllms_shape_with_a_bos_by_default(
    server: EngineHttpServer, tokenizer: SimTokenizer
) -> None:
    status, body = call(server, "POST", "/tokenize", {"model": "m", "prompt": "kalo mine rusa"})
    assert status == 200
    assert set(body) == {"count", "max_model_len", "tokens", "token_strs"}
    assert body["tokens"] == tokenizer.encode("kalo mine rusa")
    assert body["tokens"][0] == tokenizer.encode("")[0]  # the BOS
    assert (body["count"], body["max_model_len"], body["token_strs"]) == (
        len(body["tokens"]),
        512,
        None,
    )
    _, bare = call(server, "POST", "/tokenize", {"prompt": "kalo", "add_special_tokens": False})
    assert bare["tokens"] == tokenizer.encode("kalo", add_special_tokens=False)
    assert tokenizer.decode(bare["tokens"]) == "kalo"
    _, strs = call(server, "POST", "/tokenize", {"prompt": "kalo", "return_token_strs": True})
    assert strs["token_strs"][0] == BOS


def test_chat_form_renders_the_template_and_adds_no_special_tokens_by_default(
    server: EngineHttpServer, tokenizer: SimTokenizer
) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "kalo?"}]
    status, body = call(server, "POST", "/tokenize", {"model": "sql", "messages": messages})
    assert status == 200
    assert body["tokens"] == tokenizer.chat(messages)
    text = tokenizer.decode(body["tokens"])
    assert text == "<|system|>\nbe brief<|end|>\n<|user|>\nkalo?<|end|>\n<|assistant|>\n"
    _, open_ended = call(
        server,
        "POST",
        "/tokenize",
        {"messages": messages, "add_generation_prompt": False, "continue_final_message": True},
    )
    assert tokenizer.decode(open_ended["tokens"]).endswith("<|user|>\nkalo?")


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model": "other", "prompt": "x"}, 404, "NotFoundError"),
        ({"prompt": 3}, 400, "BadRequestError"),
        ([1, 2], 400, "BadRequestError"),
        ({"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, 400,
         "BadRequestError"),
        ({"messages": [{"role": "alien", "content": "x"}]}, 400, "BadRequestError"),
    ],
)  # fmt: skip
def test_bad_requests_get_vllms_error_shape(
    server: EngineHttpServer, body: Any, status: int, kind: str
) -> None:
    got, answer = call(server, "POST", "/tokenize", body)
    assert got == status
    assert answer["error"]["type"] == kind
    assert answer["error"]["code"] == status
    assert answer["error"]["message"]


def test_added_routes_replace_or_extend_and_a_failing_handler_is_a_500(
    server: EngineHttpServer,
) -> None:
    def load(request: EngineRequest) -> EngineReply:
        return EngineReply(200, f"running {request.query}\n".encode(), "text/plain")

    def broken(_request: EngineRequest) -> EngineReply:
        raise RuntimeError("tokenizer exploded")

    server.add_route("GET", "/metrics", load)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("GET", "/metrics?x=1")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"running x=1\n")
    # the same keep-alive connection serves the next request
    server.add_route("POST", "/tokenize", broken)
    connection.request("POST", "/tokenize", b"{}")
    failed = connection.getresponse()
    assert failed.status == 500
    assert "tokenizer exploded" in json.loads(failed.read())["error"]["message"]
    connection.close()
    assert call(server, "GET", "/nope")[0] == 404
    assert server.hits["/metrics"] == 1
    assert server.hits["/tokenize"] == 1


def test_fleet_pods_carry_their_engine_address_in_endpoints_and_specs() -> None:
    with Fleet(pods=2, dp_sizes=(2, 1), engine_http=True, seed=1) as fleet:
        endpoints = fleet.endpoints()
        by_pod = {e.id.pod: e.engine for e in endpoints}
        assert len(set(by_pod.values())) == 2
        for endpoint in endpoints:
            assert endpoint.engine == fleet.engine_server(endpoint.id.pod).url
        parsed = [e for spec in fleet.endpoint_specs() for e in parse_endpoint_spec(spec)]
        assert parsed == endpoints
        assert fleet.tokenizer is not None
        pod = endpoints[0].id.pod
        status, body = call(fleet.engine_server(pod), "POST", "/tokenize", {"prompt": "ka lo"})
        assert (status, body["tokens"]) == (200, fleet.tokenizer.encode("ka lo"))
    with Fleet(pods=1) as plain:
        assert [e.engine for e in plain.endpoints()] == [None]
