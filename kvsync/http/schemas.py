"""The HTTP API's request and response bodies (msgspec Structs) and its OpenAPI document. Pure.

Requests are decoded strictly: unknown fields are rejected, and nothing is coerced (``"1"``,
``1.0`` and ``true`` are not token ids; token ids are ints in [0, 2^32)). Responses are encoded
by msgspec from these Structs, so the OpenAPI document generated from them is the contract the
server actually speaks (``kvsync.daemon.runtime.pod_rows`` fills ``PodStatus`` from an ingest
snapshot). Raises nothing itself; decoding raises msgspec's errors, which ``kvsync.http.app``
turns into 400 / 422 answers.
"""

from typing import Annotated, Any, Final

import msgspec

from kvsync import __version__
from kvsync.model import TOKEN_LIMIT

TokenId = Annotated[int, msgspec.Meta(ge=0, lt=TOKEN_LIMIT)]
LoraId = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]


class MatchRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/match``: which endpoints hold the longest prefix of these tokens."""

    model: str
    token_ids: list[TokenId]
    lora_name: str | None = None
    lora_id: LoraId | None = None
    cache_salt: str | None = None
    pods: list[str] | None = None  # restrict to these pod names (all their DP ranks)


class MatchRequestWire(MatchRequest, forbid_unknown_fields=True, frozen=True):
    """``MatchRequest`` as the handler first decodes it: the token ids left as their JSON text,
    parsed into uint32 in C (``kvsync.index.keys.json_token_ids``) instead of one Python int
    each (msgspec's typed decode of 8,192 ids was a third of a lookup's CPU). The field list
    and the checks of every other field are ``MatchRequest``'s; the OpenAPI document is too."""

    token_ids: msgspec.Raw  # type: ignore[assignment]  # the same field, undecoded


class EndpointMatch(msgspec.Struct, frozen=True):
    """One endpoint holding ``matched_blocks`` leading blocks of the query."""

    pod: str
    dp_rank: int
    matched_blocks: int
    matched_tokens: int
    percent: int  # floor(100 * matched_blocks / query_blocks)
    score: float
    by_medium: dict[str, int]
    last_event_age_s: float | None  # seconds since this endpoint's last applied batch


class MatchResponse(msgspec.Struct, frozen=True):
    """Answer of ``POST /v1/match``: best endpoints first."""

    model: str
    lora_name: str | None
    block_size: int
    query_blocks: int
    matches: list[EndpointMatch]


class PodStatus(msgspec.Struct, frozen=True):
    """One subscribed endpoint, as ``GET /v1/pods`` shows it."""

    pod: str
    dp_rank: int
    model: str
    pub: str
    replay: str | None
    state: str  # connecting, replaying, live, reset
    last_seq: int | None
    last_event_age_s: float | None
    blocks: int
    gaps: int
    replays: int
    resets: int
    decode_errors: int
    duplicates: int  # live copies of batches a replay had already applied, skipped
    reset_reasons: dict[str, int]  # resets by reason (restart, hole, lost_removal, ...)
    engine: str | None = None  # http://host:port of the pod's vLLM HTTP server, if known


class PodsResponse(msgspec.Struct, frozen=True):
    pods: list[PodStatus]


class ErrorResponse(msgspec.Struct, frozen=True):
    """Every 4xx/5xx answer."""

    error: str


class StatusResponse(msgspec.Struct, frozen=True):
    """``/livez`` and ``/readyz`` when healthy."""

    status: str


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_ERRORS: Final = {
    "400": "empty body or malformed JSON",
    "408": "the body was not received in time",
    "401": "bearer token missing or wrong (only when the server has one)",
    "413": "body over the size limit, or more token ids than the limit",
    "415": "Content-Type is not application/json",
    "422": "valid JSON of the wrong shape",
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    (_, components) = msgspec.json.schema_components(
        [MatchRequest, MatchResponse, PodsResponse, ErrorResponse, StatusResponse],
        ref_template="#/components/schemas/{name}",
    )
    errors = {code: _json("ErrorResponse", text) for code, text in _ERRORS.items()}
    probe = {"200": _json("StatusResponse", "ok"), "503": _json("ErrorResponse", "not ok")}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "kvsync", "version": __version__},
        "paths": {
            "/v1/match": {
                "post": {
                    "summary": "Endpoints holding the longest prefix of a prompt's token ids",
                    "security": secured,
                    "requestBody": {"required": True, **_json("MatchRequest", "the query")},
                    "responses": {"200": _json("MatchResponse", "the matches"), **errors},
                }
            },
            "/v1/pods": {
                "get": {
                    "summary": "Subscribed endpoints and their state",
                    "security": secured,
                    "responses": {
                        "200": _json("PodsResponse", "the endpoints"),
                        "401": errors["401"],
                    },
                }
            },
            "/livez": {"get": {"summary": "The ingest loop ticked recently", "responses": probe}},
            "/readyz": {
                "get": {"summary": "Initial discovery synced, not stopping", "responses": probe}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format"}},
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
