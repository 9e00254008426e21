"""The HTTP API (Starlette app) and the thread that serves it (uvicorn). I/O edge.

Routes: ``POST /v1/match`` (token ids, a prompt or chat messages), ``POST /v1/hint``,
``POST /v1/feedback`` (the audit: ``kvsync.audit``), ``POST /v1/explain``, ``GET /v1/pods``,
the Dynamo / Mooncake routes (``POST /query``, ``/register``, ``/unregister``, ``GET /workers``:
``kvsync.http.dynamo``), all behind the optional bearer token; ``GET /health``, ``/livez``,
``/readyz``, ``/metrics``, ``/openapi.json``. Contract: docs/architecture.md and the design's
§5. Every rejection is ``{"error": "<message>"}`` with its status, counted in
``kvsync_match_requests_total{result}`` (``/v1/match``) or
``kvsync_api_requests_total{route,result}``; bad input is a 4xx. A 5xx means a prompt could not
be tokenized (502 engine error, 503 no engine, 504 timeout:
``kvsync.http.tokenize``) or explain is not available (501).

``POST /v1/match`` and ``POST /query``, the routes routers call on every request, are answered
by ``App`` straight from the ASGI messages: no Starlette request, router or response objects on
the hot path (they cost more than the lookup itself for short prompts). A request with token ids
never awaits anything after its body; a prompt awaits its tokens (the cache, else the engine).
Every other path, and a wrong method, goes through the Starlette app. Both paths run the same
checks in the same order. Hints (``kvsync.http.hints``) add ``speculative_blocks`` to an answer
only when the side index holds some for the query's context; every match carries its engines'
``load`` (``kvsync.http.loads``) and is remembered for ``/v1/feedback`` (``kvsync.audit.memo``).

Threads: ``kvsync.http.server`` runs this app on uvicorn's own thread (one asyncio loop).
Handlers are ``async def`` and block only inside the index backend's ``match`` (one call per
lookup; the in-memory backend takes its lock there, and reports the wait and hold times as
``kvsync_index_lock_{wait,hold}_seconds{side="http"}``).

Raises nothing to its callers: every request gets an answer.
"""

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from kvsync import metrics
from kvsync.audit.ledger import Audit
from kvsync.audit.memo import AnswerMemo
from kvsync.errors import IndexUnavailableError
from kvsync.http import answers, feedback, loads, schemas
from kvsync.http.dynamo import DynamoApi, DynamoRejected
from kvsync.http.explain import RemovalSeq, explain_response
from kvsync.http.hints import DEFAULT_TTL_S, MAX_TTL_S, HintIndex
from kvsync.http.intake import (
    JSON,
    Rejected,
    check_prompt,
    check_token,
    read_body,
    strict_decode,
    tokenize_body,
)
from kvsync.http.tokenize import Tokenized, TokenizeError, Tokenizer
from kvsync.http.views import EndpointView
from kvsync.index import keys, values
from kvsync.index.backend import IndexBackend
from kvsync.index.explain import Explaining
from kvsync.model import EndpointId

log = structlog.get_logger()

_JSON_HEADERS: Final = [(b"content-type", JSON.encode())]
_AUTH_CHALLENGE: Final = [(b"www-authenticate", b"Bearer")]
_DECODE: Final = msgspec.json.Decoder(schemas.MatchRequest)
_DECODE_WIRE: Final = msgspec.json.Decoder(schemas.MatchRequestWire)
_DECODE_HINT: Final = msgspec.json.Decoder(schemas.HintRequest)
_DECODE_FEEDBACK: Final = msgspec.json.Decoder(schemas.FeedbackRequest)
_ENCODE: Final = msgspec.json.Encoder()
_MATCH_OK: Final = metrics.MATCH_REQUESTS.labels(result="ok")
_QUERY_OK: Final = metrics.API_REQUESTS.labels(route="query", result="ok")


class Health(Protocol):
    """What the probes ask of the runtime."""

    def live(self) -> bool: ...
    def ready(self) -> bool: ...
    def not_ready_reason(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    """The API's share of ``config.Settings``."""

    max_body_bytes: int
    max_query_tokens: int
    api_token: str | None = None
    body_timeout_s: float = 30.0
    hint_ttl_s: float = DEFAULT_TTL_S


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = _ENCODE.encode(schemas.ErrorResponse(error=message))
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _ok(value: msgspec.Struct) -> Response:
    return Response(_ENCODE.encode(value), media_type=JSON)


def _ok_list(values: Sequence[msgspec.Struct]) -> Response:
    return Response(_ENCODE.encode(values), media_type=JSON)


class Api:
    """The route handlers, bound to the daemon's parts."""

    def __init__(
        self,
        *,
        reader: IndexBackend,
        pods: Callable[[], Sequence[schemas.PodStatus]],
        event_age: Callable[[EndpointId], float | None],
        health: Health,
        registry: CollectorRegistry,
        settings: ApiSettings,
        endpoints: Callable[[], Sequence[EndpointView]] = tuple,
        tokenizer: Tokenizer | None = None,
        hints: HintIndex | None = None,
        dynamo: DynamoApi | None = None,
        removal_seq: RemovalSeq = lambda _endpoint, _at: None,
        shard: Callable[[], schemas.ShardStatus] = lambda: schemas.UNSHARDED,
        load: loads.LoadViews = loads.NO_LOAD,
        audit: Audit | None = None,
        discovered: Callable[[EndpointId], bool] = lambda _endpoint: False,
    ) -> None:
        self.dynamo = dynamo
        self._load = load
        self.audit = audit or Audit(AnswerMemo(), on_verdict=metrics.observe_verdict)
        self._discovered = discovered
        self._removal_seq = removal_seq
        self._reader = reader
        self._endpoints = endpoints
        self._known: frozenset[EndpointId] = frozenset()
        self._known_at = -1.0
        self._tokenizer = tokenizer
        self.hints = hints if hints is not None else HintIndex()
        self._pods = pods
        self._shard = shard
        self._event_age = event_age
        self._health = health
        self._registry = registry
        self._settings = settings
        token = settings.api_token
        self._expected = None if token is None else f"Bearer {token}".encode()
        self._openapi = msgspec.json.encode(schemas.openapi())

    def _check_token(self, authorization: bytes | None) -> None:
        check_token(self._expected, authorization)

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The request body within the limits; None when the client went away meanwhile."""
        settings = self._settings
        return await read_body(headers, receive, settings.max_body_bytes, settings.body_timeout_s)

    def _decode(self, body: bytes) -> tuple[schemas.MatchRequestWire, Sequence[int] | None]:
        """The request and its token ids (None: a prompt or messages to tokenize). Fast: token
        ids parsed in C; any failure decodes the body again the strict way, for msgspec's exact
        error (400 or 422)."""
        try:
            request = _DECODE_WIRE.decode(body)
            raw = request.token_ids
            if not raw:  # absent: the request has a prompt or messages instead
                check_prompt(request)
                return request, None
            token_ids: Sequence[int] | None = keys.json_token_ids(raw)
        except (msgspec.DecodeError, ValueError):
            token_ids = self._strict(body).token_ids  # raises; accepted: the parsers differ
            request = _DECODE_WIRE.decode(body)
            if token_ids is None:  # "token_ids": null: as absent
                check_prompt(request)
                return request, None
        if request.prompt is not None or request.messages is not None:
            raise Rejected(422, "bad_shape", "give one of token_ids, prompt or messages")
        return request, self._limited(token_ids or ())

    def _limited(self, token_ids: Sequence[int]) -> Sequence[int]:
        limit = self._settings.max_query_tokens
        if len(token_ids) > limit:
            raise Rejected(413, "too_many_tokens", f"more than {limit} token ids")
        return token_ids

    async def _tokenize(self, request: schemas.MatchRequest) -> Tokenized:
        """A prompt's or chat's tokens from a pod of the model (``kvsync.http.tokenize``)."""
        if self._tokenizer is None:
            raise Rejected(503, "no_engine", "this server tokenizes no prompts: send token_ids")
        try:
            tokenized = await self._tokenizer.tokenize(request.model, tokenize_body(request))
        except TokenizeError as exc:
            raise Rejected(exc.status, exc.result, exc.message) from None
        self._limited(tokenized.tokens)
        return tokenized

    def _strict(self, body: bytes) -> schemas.MatchRequest:
        try:
            return _DECODE.decode(body)
        except msgspec.ValidationError as exc:
            raise Rejected(422, "bad_shape", str(exc)) from None
        except msgspec.DecodeError as exc:
            raise Rejected(400, "bad_json", f"malformed JSON: {exc}") from None

    def _query(
        self, request: schemas.MatchRequest, token_ids: Sequence[int], tokenized: Tokenized | None
    ) -> values.Query:
        return answers.query_of(request, token_ids, tokenized)

    def _answer(
        self, request: schemas.MatchRequest, token_ids: Sequence[int], tokenized: Tokenized | None
    ) -> schemas.MatchResponse:
        query = answers.query_of(request, token_ids, tokenized)
        result = self._match(query)
        self.audit.memo.remember(query, result, time.time())
        speculative = answers.speculative(self.hints, query, result) if len(self.hints) else {}
        return answers.match_response(
            request,
            query,
            result,
            speculative,
            event_age=self._event_age,
            tokenized=tokenized,
            load=self._load,
        )

    async def match_raw(
        self, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """``POST /v1/match`` from ASGI parts: (status, JSON body, extra headers), or None when
        the client disconnected before its body arrived (nobody to answer)."""
        try:
            self._check_token(headers.get(b"authorization"))
            body = await self._body(headers, receive)
            if body is None:
                return None
            started = time.perf_counter()
            request, token_ids = self._decode(body)
            tokenized = None
            if token_ids is None:
                tokenized = await self._tokenize(request)
                token_ids = tokenized.tokens
            answer = _ENCODE.encode(self._answer(request, token_ids, tokenized))
        except Rejected as rejected:
            metrics.MATCH_REQUESTS.labels(result=rejected.result).inc()
            error = _ENCODE.encode(schemas.ErrorResponse(error=rejected.message))
            return rejected.status, error, _AUTH_CHALLENGE if rejected.status == 401 else []
        metrics.MATCH_DURATION.observe(time.perf_counter() - started)
        _MATCH_OK.inc()
        return 200, answer, []

    async def match(self, request: Request) -> Response:
        """The Starlette route of ``match_raw`` (``App`` serves the route without it)."""
        headers = dict(request.scope["headers"])
        answer = await self.match_raw(headers, request.receive)
        if answer is None:
            return Response(status_code=400)  # the client is gone: never sent
        status, body, extra = answer
        response = Response(body, status_code=status, media_type=JSON)
        for name, value in extra:
            response.headers[name.decode()] = value.decode()
        return response

    async def pods(self, request: Request) -> Response:
        try:
            self._check_token(request.headers.get("authorization", "").encode("latin-1"))
        except Rejected as rejected:
            return _error(rejected.status, rejected.message, {"WWW-Authenticate": "Bearer"})
        return _ok(schemas.PodsResponse(pods=list(self._pods()), shard=self._shard()))

    async def _json_route(
        self,
        request: Request,
        route: str,
        handle: Callable[[bytes], Awaitable[tuple[int, bytes]]],
        *,
        secured: bool = True,
    ) -> Response:
        """A JSON POST route: token, body within the limits, ``handle``; rejections counted."""
        headers = dict(request.scope["headers"])
        try:
            if secured:
                self._check_token(headers.get(b"authorization"))
            body = await self._body(headers, request.receive)
            if body is None:
                return Response(status_code=400)  # the client is gone: never sent
            status, payload = await handle(body)
        except (Rejected, DynamoRejected) as rejected:
            metrics.API_REQUESTS.labels(route=route, result=rejected.result).inc()
            extra = {"WWW-Authenticate": "Bearer"} if rejected.status == 401 else None
            return _error(rejected.status, rejected.message, extra)
        metrics.API_REQUESTS.labels(route=route, result="ok").inc()
        return Response(payload, status_code=status, media_type=JSON)

    async def _tokens(
        self, request: schemas.MatchRequest
    ) -> tuple[Sequence[int], Tokenized | None]:
        """The request's token ids, tokenizing a prompt or messages (for hint and explain)."""
        if request.token_ids is not None:
            if request.prompt is not None or request.messages is not None:
                raise Rejected(422, "bad_shape", "give one of token_ids, prompt or messages")
            return self._limited(request.token_ids), None
        check_prompt(request)
        tokenized = await self._tokenize(request)
        return tokenized.tokens, tokenized

    def _subscribed(self, endpoint: EndpointId) -> bool:
        """Is ``endpoint`` known: discovered (by any shard), or subscribed here? The subscribed
        set is re-read at most once a second, or when it does not know the endpoint (a hint per
        routed request must not snapshot ingest each)."""
        if self._discovered(endpoint):
            return True
        now = time.monotonic()
        if endpoint not in self._known or now - self._known_at > 1.0:
            self._known = frozenset(view.id for view in self._endpoints())
            self._known_at = now
        return endpoint in self._known

    def _match(self, query: values.Query) -> values.MatchResult:
        """The backend's answer; a shared backend that cannot answer now is a 503."""
        try:
            return self._reader.match(query, time.time())
        except IndexUnavailableError as exc:
            raise Rejected(503, "unavailable", f"index unavailable: {exc}") from exc

    async def hint(self, request: Request) -> Response:
        """``POST /v1/hint``: the request's blocks are on their way to ``pod`` (speculative)."""

        async def handle(body: bytes) -> tuple[int, bytes]:
            hint = strict_decode(_DECODE_HINT, body)
            ttl = self._settings.hint_ttl_s if hint.ttl_s is None else hint.ttl_s
            if ttl > MAX_TTL_S:
                raise Rejected(422, "bad_shape", f"ttl_s over the limit of {MAX_TTL_S} s")
            endpoint = EndpointId(hint.pod, hint.dp_rank)
            if not self._subscribed(endpoint):
                raise Rejected(
                    404, "unknown_pod", f"{hint.pod} rank {hint.dp_rank} is no known endpoint"
                )
            token_ids, tokenized = await self._tokens(hint)
            query = self._query(hint, token_ids, tokenized)
            result = self._match(query)
            matched = next((m.matched_blocks for m in result.matches if m.endpoint == endpoint), 0)
            block_keys = keys.query_keys(token_ids, result.block_size, query.cache_salt)
            hinted = block_keys[matched:]
            if hinted:
                self.hints.add(
                    answers.hint_context(query, result.block_size), endpoint, hinted, ttl
                )
            answer = schemas.HintResponse(
                pod=hint.pod,
                dp_rank=hint.dp_rank,
                block_size=result.block_size,
                hinted_blocks=len(hinted),
                matched_blocks=matched,
                ttl_s=ttl,
                token_count=len(token_ids),
            )
            return 200, _ENCODE.encode(answer)

        return await self._json_route(request, "hint", handle)

    async def feedback(self, request: Request) -> Response:
        """``POST /v1/feedback``: judge a routed request against the answer given for it."""

        async def handle(body: bytes) -> tuple[int, bytes]:
            report = strict_decode(_DECODE_FEEDBACK, body)
            token_ids, tokenized = await self._tokens(report)
            query = self._query(report, token_ids, tokenized)  # the same key as its match
            verdict = self.audit.judge(feedback.report_of(report, query), time.time())
            return 200, _ENCODE.encode(feedback.verdict_response(verdict))

        return await self._json_route(request, "feedback", handle)

    async def explain(self, request: Request) -> Response:
        """``POST /v1/explain``: the match, and why each endpoint's run stops where it does."""

        async def handle(body: bytes) -> tuple[int, bytes]:
            reader = self._reader
            if not isinstance(reader, Explaining):
                raise Rejected(501, "not_implemented", "this index backend cannot explain")
            asked = strict_decode(_DECODE, body)
            token_ids, tokenized = await self._tokens(asked)
            query = self._query(asked, token_ids, tokenized)
            explanation = reader.explain(query, time.time())
            matched = {run.endpoint: run.matched_blocks for run in explanation.runs}
            speculative: dict[EndpointId, int] = {}
            if len(self.hints):
                context = answers.hint_context(query, explanation.block_size)
                block_keys = keys.query_keys(token_ids, explanation.block_size, query.cache_salt)
                speculative = self.hints.speculative(context, block_keys, matched)
            answer = explain_response(
                explanation,
                model=asked.model,
                index_model=query.model,
                lora_name=query.lora_name,
                token_count=len(token_ids),
                views=self._endpoints(),
                removal_seq=self._removal_seq,
                speculative=speculative,
                ages=self._event_age,
                pods=query.pods,
                tokenized=None if tokenized is None else answers.tokenized_by(tokenized),
            )
            return 200, _ENCODE.encode(answer)

        return await self._json_route(request, "explain", handle)

    def _dynamo_api(self) -> DynamoApi:
        if self.dynamo is None:
            raise Rejected(404, "not_found", "the Dynamo-compatible API is not enabled")
        return self.dynamo

    async def dynamo_query(self, request: Request) -> Response:
        async def handle(body: bytes) -> tuple[int, bytes]:
            return 200, self._dynamo_api().query(body, time.time())

        return await self._json_route(request, "query", handle)

    async def dynamo_query_raw(
        self, headers: dict[bytes, bytes], receive: Receive
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """``POST /query`` from ASGI parts (the lookup path of Dynamo's routers, as match_raw)."""
        try:
            self._check_token(headers.get(b"authorization"))
            body = await self._body(headers, receive)
            if body is None:
                return None
            answer = self._dynamo_api().query(body, time.time())
        except (Rejected, DynamoRejected) as rejected:
            metrics.API_REQUESTS.labels(route="query", result=rejected.result).inc()
            error = _ENCODE.encode(schemas.ErrorResponse(error=rejected.message))
            return rejected.status, error, _AUTH_CHALLENGE if rejected.status == 401 else []
        _QUERY_OK.inc()
        return 200, answer, []

    async def dynamo_register(self, request: Request) -> Response:
        async def handle(body: bytes) -> tuple[int, bytes]:
            return 201, _ENCODE.encode(self._dynamo_api().register(body))

        return await self._json_route(request, "register", handle)

    async def dynamo_unregister(self, request: Request) -> Response:
        async def handle(body: bytes) -> tuple[int, bytes]:
            return 200, _ENCODE.encode(self._dynamo_api().unregister(body))

        return await self._json_route(request, "unregister", handle)

    async def dynamo_workers(self, request: Request) -> Response:
        try:
            self._check_token(request.headers.get("authorization", "").encode("latin-1"))
            workers = self._dynamo_api().workers()
        except Rejected as rejected:
            extra = {"WWW-Authenticate": "Bearer"} if rejected.status == 401 else None
            return _error(rejected.status, rejected.message, extra)
        return _ok_list(workers)

    async def health(self, _request: Request) -> Response:
        """Dynamo's liveness route: 200 while the server answers."""
        return _ok(schemas.StatusResponse(status="ok"))

    async def livez(self, _request: Request) -> Response:
        if self._health.live():
            return _ok(schemas.StatusResponse(status="ok"))
        return _error(503, "ingest loop has not ticked recently")

    async def readyz(self, _request: Request) -> Response:
        if self._health.ready():
            return _ok(schemas.StatusResponse(status="ok"))
        return _error(503, self._health.not_ready_reason())

    async def metrics(self, _request: Request) -> Response:
        return Response(generate_latest(self._registry), media_type=CONTENT_TYPE_LATEST)

    async def openapi(self, _request: Request) -> Response:
        return Response(self._openapi, media_type=JSON)


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 from the router, in the API's error shape."""
    assert isinstance(exc, HTTPException)  # noqa: S101  # registered for HTTPException only
    if exc.status_code == 404:
        return _error(404, f"no such path: {request.url.path}")
    if exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
        return _error(405, message, dict(exc.headers or {}))
    return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


_RAW: Final = frozenset({"/v1/match", "/query"})


class App:
    """The ASGI application: ``POST /v1/match`` and ``POST /query`` (the lookups) answered here,
    everything else by Starlette."""

    def __init__(self, api: Api, fallback: Starlette) -> None:
        self._api = api
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _RAW:
            if scope["path"] == "/v1/match":
                answer = await self._api.match_raw(dict(scope["headers"]), receive)
            else:
                answer = await self._api.dynamo_query_raw(dict(scope["headers"]), receive)
            if answer is None:
                return
            status, body, extra = answer
            headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *extra]
            start: Message = {"type": "http.response.start", "status": status, "headers": headers}
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        await self.fallback(scope, receive, send)


def create_app(api: Api) -> App:
    """The ASGI application serving ``api``."""
    routes = [
        Route("/v1/match", api.match, methods=["POST"]),
        Route("/v1/feedback", api.feedback, methods=["POST"]),
        Route("/v1/pods", api.pods, methods=["GET"]),
        Route("/v1/hint", api.hint, methods=["POST"]),
        Route("/v1/explain", api.explain, methods=["POST"]),
        Route("/query", api.dynamo_query, methods=["POST"]),
        Route("/register", api.dynamo_register, methods=["POST"]),
        Route("/unregister", api.dynamo_unregister, methods=["POST"]),
        Route("/workers", api.dynamo_workers, methods=["GET"]),
        Route("/health", api.health, methods=["GET"]),
        Route("/livez", api.livez, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    return App(api, Starlette(routes=routes, exception_handlers={HTTPException: _http_error}))
