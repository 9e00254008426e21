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
LoadWeight = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
TokenCount = Annotated[int, msgspec.Meta(ge=0, lt=TOKEN_LIMIT)]


ChatMessage = dict[str, Any]  # an OpenAI chat message, passed to the engine as it is


class MatchRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/match``: which endpoints hold the longest prefix of this request.

    Exactly one of ``token_ids``, ``prompt`` (OpenAI completions) or ``messages`` (OpenAI chat);
    a prompt is tokenized by a pod of ``model`` (vLLM's ``POST /tokenize``, with
    ``add_special_tokens``, and for chat ``add_generation_prompt`` / ``continue_final_message``:
    vLLM's defaults when absent). ``model`` may name a LoRA adapter (OpenAI style).
    """

    model: str
    token_ids: list[TokenId] | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool | None = None
    lora_name: str | None = None
    lora_id: LoraId | None = None
    cache_salt: str | None = None
    pods: list[str] | None = None  # restrict to these pod names (all their DP ranks)
    # 0..1: rank by (1 - w) x cache + w x (1 - load) over every endpoint of the model (README)
    load_weight: LoadWeight | None = None


class MatchRequestWire(MatchRequest, forbid_unknown_fields=True, frozen=True):
    """``MatchRequest`` as the handler first decodes it: the token ids left as their JSON text,
    parsed into uint32 in C (``kvsync.index.keys.json_token_ids``) instead of one Python int
    each (msgspec's typed decode of 8,192 ids was a third of a lookup's CPU). The field list
    and the checks of every other field are ``MatchRequest``'s; the OpenAPI document is too."""

    # the same field, undecoded; empty (``len() == 0``) when absent: a prompt or messages
    token_ids: msgspec.Raw = msgspec.Raw()  # type: ignore[assignment]


class EndpointLoad(msgspec.Struct, frozen=True):
    """An engine's load as kvsync last scraped it from its ``/metrics``."""

    state: str  # ok, failing (the last scrape failed: error says why), pending (none yet)
    age_s: float | None  # seconds since the figures below were read; None: never
    running: float | None  # requests in the engine's running batch
    waiting: float | None  # requests queued in the engine
    kv_cache_usage: float | None  # 0..1 of the KV-cache blocks in use
    prefix_hit_rate: float | None  # 0..1, the engine's own, over the last minute
    error: str | None  # why the last scrape failed (timeout, unreachable, not_vllm, ...)


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
    # blocks after the matched ones that a hint (POST /v1/hint) says are on their way; never
    # counted in matched_blocks, matched_tokens, percent or score
    speculative_blocks: int = 0
    load: EndpointLoad | None = None  # None: kvsync does not scrape this endpoint's engine


class EndpointMatchWire(EndpointMatch, frozen=True):
    """``EndpointMatch`` as the handler encodes it: ``load`` is the endpoint's ``EndpointLoad``
    already encoded (``kvsync.daemon.load_views`` keeps each endpoint's JSON from scrape to
    scrape and writes only the age per answer: building and encoding 16 loads was a third of an
    8k lookup's CPU). The OpenAPI document describes ``EndpointMatch``."""

    load: msgspec.Raw | None = None  # type: ignore[assignment]  # the same field, encoded


class TokenizedBy(msgspec.Struct, frozen=True):
    """Where a prompt's tokens came from."""

    pod: str  # whose engine tokenized it (the first time, when cached)
    cached: bool  # answered from kvsync's tokenize cache


class MatchResponse(msgspec.Struct, frozen=True):
    """Answer of ``POST /v1/match``: best endpoints first."""

    model: str
    lora_name: str | None
    block_size: int
    query_blocks: int
    matches: list[EndpointMatch]
    token_count: int = 0  # the token ids the answer is for (a router can check its own)
    tokenized: TokenizedBy | None = None  # set for a prompt or messages


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
    load: EndpointLoad | None = None  # None: kvsync does not scrape this endpoint's engine
    audit: "EndpointAudit | None" = None  # None: no feedback about this endpoint yet


class EndpointAudit(msgspec.Struct, frozen=True):
    """What ``POST /v1/feedback`` reports about one endpoint say, since the first one."""

    requests: int
    exact: int
    over: int
    under: int
    unknown: int
    predicted_hit_rate: float | None  # kvsync's predicted cached / prompt tokens of those
    reported_hit_rate: float | None  # the engine-reported cached / prompt tokens of the same
    engine_hit_rate: float | None  # the engine's counters since kvsync first scraped it
    drift: float | None  # predicted_hit_rate - engine_hit_rate


class FeedbackRequest(MatchRequest, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``POST /v1/feedback``: the request (as ``/v1/match`` took it) was routed to ``pod``,
    rank ``dp_rank``, whose engine reported ``cached_tokens`` for it (vLLM's
    ``usage.prompt_tokens_details.cached_tokens``; 0 when it sends no details)."""

    pod: str
    dp_rank: Annotated[int, msgspec.Meta(ge=0)] = 0
    cached_tokens: TokenCount


class FeedbackResponse(msgspec.Struct, frozen=True):
    """The verdict on one routed request."""

    outcome: str  # exact, over, under, unknown (no answer kept for that query)
    predicted_tokens: int | None  # what kvsync's answer implied the engine would reuse
    cached_tokens: int
    error_tokens: int | None  # predicted - cached


class ShardStatus(msgspec.Struct, frozen=True):
    """This replica's share of the endpoints (``--shard-count``, ``--shard-index``)."""

    index: int
    count: int
    skipped_endpoints: int  # discovered, but another shard's: not subscribed here


UNSHARDED: Final = ShardStatus(index=0, count=1, skipped_endpoints=0)


class PodsResponse(msgspec.Struct, frozen=True):
    pods: list[PodStatus]  # the endpoints this replica subscribes to
    shard: ShardStatus


class HintRequest(MatchRequest, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``POST /v1/hint``: the request (as ``/v1/match`` takes it) was just routed to ``pod``,
    rank ``dp_rank``: report its blocks there as speculative for ``ttl_s`` seconds."""

    pod: str
    dp_rank: Annotated[int, msgspec.Meta(ge=0)] = 0
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] | None = None  # default --hint-ttl-seconds


class HintResponse(msgspec.Struct, frozen=True):
    pod: str
    dp_rank: int
    block_size: int
    hinted_blocks: int  # blocks of the request now hinted (beyond what the pod already holds)
    matched_blocks: int  # blocks of it the pod already holds (not hinted)
    ttl_s: float
    token_count: int


class BlockCause(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why an endpoint does not hold the block its run stopped at."""

    reason: str  # never_stored, removed, reset, replaying, evicted, context_evicted, query_end
    detail: str
    at: float | None = None  # wall-clock seconds of the removal / reset / eviction
    seq: int | None = None  # the batch that removed it
    cause: str | None = None  # the reset's reason (restart, hole, ...) or eviction's (max_keys)


class EndpointExplanation(msgspec.Struct, frozen=True):
    """One endpoint of the query's context: how far it matches and why not further."""

    pod: str
    dp_rank: int
    matched_blocks: int
    stopped_at: int  # the first query block it does not hold (query_blocks: it holds them all)
    why: BlockCause
    state: str  # connecting, replaying, live, reset
    last_seq: int | None
    last_event_age_s: float | None
    speculative_blocks: int = 0


class ExplainResponse(msgspec.Struct, frozen=True):
    """``POST /v1/explain``: every endpoint of the model, the matching ones first."""

    model: str
    lora_name: str | None
    block_size: int
    query_blocks: int
    token_count: int
    endpoints: list[EndpointExplanation]
    tokenized: TokenizedBy | None = None


# --- the Dynamo standalone indexer / Mooncake conductor API ------------------------------------
InstanceId = int | str


class DynamoRegister(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /register``: Dynamo's fields; ``modelname`` and ``type`` are Mooncake's."""

    instance_id: InstanceId
    endpoint: str
    model_name: str | None = None
    modelname: str | None = None
    block_size: Annotated[int, msgspec.Meta(gt=0)] | None = None
    replay_endpoint: str | None = None
    dp_rank: Annotated[int, msgspec.Meta(ge=0, le=1023)] = 0
    tenant_id: str | None = None
    lora_name: str | None = None
    type: str | None = None
    additionalsalt: str | None = None


class DynamoUnregister(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    instance_id: InstanceId
    model_name: str | None = None
    modelname: str | None = None
    tenant_id: str | None = None
    dp_rank: Annotated[int, msgspec.Meta(ge=0)] | None = None
    block_size: int | None = None
    lora_name: str | None = None
    type: str | None = None


class DynamoQuery(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /query``: Dynamo's ``model_name`` or Mooncake's ``model``."""

    token_ids: list[TokenId]
    model_name: str | None = None
    model: str | None = None
    lora_name: str | None = None
    tenant_id: str | None = None
    instance_id: InstanceId | None = None
    block_size: int | None = None
    cache_salt: str | None = None
    lora_id: LoraId | None = None


class DynamoQueryWire(DynamoQuery, forbid_unknown_fields=True, frozen=True):
    """``DynamoQuery`` with the token ids left as JSON text (parsed in C, as ``/v1/match``)."""

    token_ids: msgspec.Raw  # type: ignore[assignment]  # the same field, undecoded


class DynamoInstance(msgspec.Struct, frozen=True):
    """Dynamo 1.6's per-instance summary in ``/query``: matched tokens, longest over its ranks;
    ``gpu`` those on GPU, ``cpu`` / ``disk`` the longest counting those tiers and above."""

    longest_matched: int
    gpu: int
    cpu: int
    disk: int
    dp: dict[str, int]


class DynamoScores(msgspec.Struct, frozen=True):
    """Dynamo's answer: matched tokens per instance, then per DP rank (both as strings);
    ``frequencies[i]``: how many (instance, rank) hold query block i; ``instances``: the
    per-instance summary Dynamo 1.6.1 adds."""

    scores: dict[str, dict[str, int]]
    frequencies: list[int]
    instances: dict[str, DynamoInstance]


class DynamoWorker(msgspec.Struct, frozen=True):
    """One instance in ``GET /workers`` (Dynamo's shape)."""

    instance_id: InstanceId
    source: str  # "zmq" (POST /register, as Dynamo says) or "discovery" (kvsync's pods)
    status: str  # active, pending (kvsync replays what it missed)
    model_name: str
    routing_group: str  # the tenant ("default")
    block_size: int | None  # as registered (None: a discovered pod; kvsync reads it from events)
    endpoints: dict[str, str]  # dp_rank -> ZMQ address
    listeners: dict[str, dict[str, str]]  # dp_rank -> {endpoint, status}


class DynamoStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    instance_id: InstanceId | None = None
    removed_instances: list[str] | None = None


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
_TOKENIZE_ERRORS: Final = {
    "502": "the engine answered /tokenize with an error or a malformed body",
    "503": "no subscribed pod of the model to tokenize with, or none reachable",
    "504": "the engine did not tokenize within --tokenize-timeout-seconds",
}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API."""
    (_, components) = msgspec.json.schema_components(
        [
            MatchRequest, MatchResponse, PodsResponse, ErrorResponse, StatusResponse,
            HintRequest, HintResponse, FeedbackRequest, FeedbackResponse, ExplainResponse,
            DynamoQuery, DynamoScores,
            DynamoRegister, DynamoUnregister, DynamoStatus, list[DynamoWorker],
        ],
        ref_template="#/components/schemas/{name}",
    )  # fmt: skip
    errors = {code: _json("ErrorResponse", text) for code, text in _ERRORS.items()}
    tokenize_errors = {
        code: _json("ErrorResponse", text) for code, text in _TOKENIZE_ERRORS.items()
    }
    probe = {"200": _json("StatusResponse", "ok"), "503": _json("ErrorResponse", "not ok")}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "kvsync", "version": __version__},
        "paths": {
            "/v1/match": {
                "post": {
                    "summary": "Endpoints holding the longest prefix of a request: token ids, "
                    "a prompt or chat messages (tokenized by a pod of the model)",
                    "security": secured,
                    "requestBody": {"required": True, **_json("MatchRequest", "the query")},
                    "responses": {
                        "200": _json("MatchResponse", "the matches"),
                        **errors,
                        **tokenize_errors,
                    },
                }
            },
            "/v1/hint": {
                "post": {
                    "summary": "Report a request's blocks as on their way to one endpoint "
                    "(speculative_blocks in answers, for ttl_s)",
                    "security": secured,
                    "requestBody": {"required": True, **_json("HintRequest", "the hint")},
                    "responses": {
                        "200": _json("HintResponse", "hinted"),
                        "404": _json("ErrorResponse", "the pod is not subscribed"),
                        **errors,
                        **tokenize_errors,
                    },
                }
            },
            "/v1/feedback": {
                "post": {
                    "summary": "What the engine reported for a request routed on an answer: "
                    "kvsync's audit (exact, over, under, unknown)",
                    "security": secured,
                    "requestBody": {"required": True, **_json("FeedbackRequest", "the report")},
                    "responses": {
                        "200": _json("FeedbackResponse", "the verdict"),
                        **errors,
                        **tokenize_errors,
                    },
                }
            },
            "/v1/explain": {
                "post": {
                    "summary": "Per endpoint of the model: matched blocks and why the run stops",
                    "security": secured,
                    "requestBody": {"required": True, **_json("MatchRequest", "the query")},
                    "responses": {
                        "200": _json("ExplainResponse", "the explanation"),
                        "501": _json("ErrorResponse", "the index backend cannot explain"),
                        **errors,
                        **tokenize_errors,
                    },
                }
            },
            "/query": {
                "post": {
                    "summary": "Dynamo's / Mooncake's overlap query (matched tokens per instance "
                    "and DP rank); Mooncake's answer when the body names `model`",
                    "security": secured,
                    "requestBody": {"required": True, **_json("DynamoQuery", "the query")},
                    "responses": {"200": _json("DynamoScores", "the scores"), **errors},
                }
            },
            "/register": {
                "post": {
                    "summary": "Subscribe to a publisher (Dynamo / Mooncake registration)",
                    "security": secured,
                    "requestBody": {"required": True, **_json("DynamoRegister", "the publisher")},
                    "responses": {
                        "201": _json("DynamoStatus", "registered"),
                        "409": _json("ErrorResponse", "the id is a discovered pod"),
                        **errors,
                    },
                }
            },
            "/unregister": {
                "post": {
                    "summary": "Stop a registered publisher (every rank unless dp_rank)",
                    "security": secured,
                    "requestBody": {"required": True, **_json("DynamoUnregister", "which")},
                    "responses": {
                        "200": _json("DynamoStatus", "unregistered"),
                        "404": _json("ErrorResponse", "not registered"),
                        **errors,
                    },
                }
            },
            "/workers": {
                "get": {
                    "summary": "Every instance, registered or discovered (Dynamo's shape)",
                    "security": secured,
                    "responses": {
                        "200": {
                            "description": "the instances",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/DynamoWorker"},
                                    }
                                }
                            },
                        },
                        "401": errors["401"],
                    },
                }
            },
            "/health": {"get": {"summary": "Dynamo's liveness route", "responses": probe}},
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
