"""The HTTP API (Starlette app) and the thread that serves it (uvicorn). I/O edge.

Routes: ``POST /v1/match``, ``GET /v1/pods`` (both behind the optional bearer token),
``GET /livez``, ``GET /readyz``, ``GET /metrics``, ``GET /openapi.json``. Contract:
docs/architecture.md and the design's §5. Every rejection is ``{"error": "<message>"}`` with a 4xx
status and is counted in ``kvsync_match_requests_total{result}``; bad input never yields a 5xx.

``POST /v1/match``, the route routers call on every request, is answered by ``App`` straight from
the ASGI messages: no Starlette request, router or response objects on the hot path (they cost
more than the lookup itself for short prompts). Every other path, and a wrong method on
``/v1/match``, goes through the Starlette app. Both paths run the same checks in the same order.

Threads: ``kvsync.http.server`` runs this app on uvicorn's own thread (one asyncio loop).
Handlers are ``async def`` and block only inside the index backend's ``match`` (one call per
lookup; the in-memory backend takes its lock there, and reports the wait and hold times as
``kvsync_index_lock_{wait,hold}_seconds{side="http"}``).

Raises nothing to its callers: every request gets an answer.
"""

import asyncio
import hmac
import time
from collections.abc import Callable, Sequence
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
from kvsync.errors import IndexUnavailableError
from kvsync.http import schemas
from kvsync.index import keys, values
from kvsync.index.backend import IndexBackend
from kvsync.model import EndpointId

log = structlog.get_logger()

JSON: Final = "application/json"
_JSON_HEADERS: Final = [(b"content-type", JSON.encode())]
_AUTH_CHALLENGE: Final = [(b"www-authenticate", b"Bearer")]
_DECODE: Final = msgspec.json.Decoder(schemas.MatchRequest)
_DECODE_WIRE: Final = msgspec.json.Decoder(schemas.MatchRequestWire)
_ENCODE: Final = msgspec.json.Encoder()
_MATCH_OK: Final = metrics.MATCH_REQUESTS.labels(result="ok")


class Rejected(Exception):  # noqa: N818  # control flow inside the handler: an answer, not a fault
    """A request answered with an error status; ``result`` is the metric label."""

    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result
        self.message = message


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


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = _ENCODE.encode(schemas.ErrorResponse(error=message))
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _ok(value: msgspec.Struct) -> Response:
    return Response(_ENCODE.encode(value), media_type=JSON)


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
        shard: Callable[[], schemas.ShardStatus] = lambda: schemas.UNSHARDED,
    ) -> None:
        self._reader = reader
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
        if self._expected is None:
            return
        if not hmac.compare_digest(authorization or b"", self._expected):
            raise Rejected(401, "unauthorized", "missing or wrong bearer token")

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | None:
        """The request body within the limits; None when the client went away meanwhile."""
        raw_type = headers.get(b"content-type", b"").decode("latin-1")
        media_type = raw_type.partition(";")[0].strip().lower()
        if media_type != JSON:
            raise Rejected(415, "unsupported_media_type", "Content-Type must be application/json")
        limit = self._settings.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise Rejected(413, "too_large", f"body over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        deadline = self._settings.body_timeout_s
        try:
            async with asyncio.timeout(deadline):  # a client that stalls mid-body is cut off
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # http.disconnect
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:  # chunked or lying about its length: stop reading now
                        raise Rejected(413, "too_large", f"body over the limit of {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise Rejected(408, "timeout", f"body not received within {deadline} s") from None
        if size == 0:
            raise Rejected(400, "empty_body", "empty body")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _decode(self, body: bytes) -> tuple[schemas.MatchRequestWire, Sequence[int]]:
        """The request and its token ids. Fast: token ids parsed in C; any failure decodes the
        body again the strict way, for msgspec's exact error (400 or 422)."""
        try:
            request = _DECODE_WIRE.decode(body)
            token_ids = keys.json_token_ids(request.token_ids)
        except (msgspec.DecodeError, ValueError):
            token_ids = self._strict(body).token_ids  # raises; accepted: the parsers differ
            request = _DECODE_WIRE.decode(body)
        limit = self._settings.max_query_tokens
        if len(token_ids) > limit:
            raise Rejected(413, "too_many_tokens", f"more than {limit} token ids")
        return request, token_ids

    def _strict(self, body: bytes) -> schemas.MatchRequest:
        try:
            return _DECODE.decode(body)
        except msgspec.ValidationError as exc:
            raise Rejected(422, "bad_shape", str(exc)) from None
        except msgspec.DecodeError as exc:
            raise Rejected(400, "bad_json", f"malformed JSON: {exc}") from None

    def _answer(
        self, request: schemas.MatchRequestWire, token_ids: Sequence[int]
    ) -> schemas.MatchResponse:
        pods = None if request.pods is None else frozenset(request.pods)
        query = values.Query(
            model=request.model,
            token_ids=token_ids,
            lora_name=request.lora_name,
            lora_id=request.lora_id,
            cache_salt=request.cache_salt,
            pods=pods,
        )
        try:
            result = self._reader.match(query, time.time())
        except IndexUnavailableError as exc:
            raise Rejected(503, "unavailable", f"index unavailable: {exc}") from exc
        tokens = len(token_ids)
        matches = []
        for found in result.matches:
            # A context with several block sizes answers each endpoint in its own block size.
            size = found.block_size or result.block_size
            matches.append(
                schemas.EndpointMatch(
                    pod=found.endpoint.pod,
                    dp_rank=found.endpoint.dp_rank,
                    matched_blocks=found.matched_blocks,
                    matched_tokens=found.matched_blocks * size,
                    percent=100 * found.matched_blocks // (tokens // size),
                    score=found.score,
                    by_medium=dict(found.by_medium),
                    last_event_age_s=self._event_age(found.endpoint),
                )
            )
        return schemas.MatchResponse(
            model=request.model,
            lora_name=request.lora_name,
            block_size=result.block_size,
            query_blocks=result.query_blocks,
            matches=matches,
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
            answer = _ENCODE.encode(self._answer(*self._decode(body)))
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


class App:
    """The ASGI application: ``POST /v1/match`` answered here, everything else by Starlette."""

    def __init__(self, api: Api, fallback: Starlette) -> None:
        self._api = api
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/v1/match" and scope["method"] == "POST":
            answer = await self._api.match_raw(dict(scope["headers"]), receive)
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
        Route("/v1/pods", api.pods, methods=["GET"]),
        Route("/livez", api.livez, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
    ]
    return App(api, Starlette(routes=routes, exception_handlers={HTTPException: _http_error}))
