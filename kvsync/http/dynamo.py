"""The API of NVIDIA Dynamo's standalone KV indexer and Mooncake's conductor, over kvsync. I/O edge.

Routers written for either use kvsync unchanged. Shapes: Dynamo's standalone indexer docs (1.6,
"HTTP API") and Mooncake's conductor indexer API (RFC #1403):

- ``POST /query {"model_name", "token_ids", "lora_name"?, "tenant_id"?}`` →
  ``{"scores": {"<instance>": {"<dp_rank>": matched_tokens}}, "frequencies": [...],
  "instances": {"<instance>": {"longest_matched", "gpu", "cpu", "disk", "dp"}}}`` (Dynamo; checked
  against a running Dynamo 1.6.1, ``scripts/dynamo-indexer.sh``);
  with Mooncake's ``"model"`` instead of ``"model_name"`` the answer is Mooncake's
  ``{"<tenant>": {"<instance>": {"longest_matched", "<MEDIUM>": tokens, "DP": {rank: tokens}}}}``.
  ``instance_id`` restricts to one instance, ``cache_salt`` / ``lora_id`` as in ``/v1/match``.
  The same lookup as ``/v1/match`` (one ``IndexBackend.match``); instances are pod names, or the
  ``instance_id`` they were registered with.
- ``POST /register {"instance_id", "endpoint", "model_name" | "modelname", "block_size"?,
  "replay_endpoint"?, "dp_rank"?, "tenant_id"?}`` → 201: kvsync subscribes to that publisher
  (an endpoint ``(str(instance_id), dp_rank)`` next to the discovered ones; no Kubernetes).
  ``block_size`` is checked (> 0) and shown, but kvsync takes block sizes from the events.
  Dynamo's answer ``{"status": "ok"}`` (Mooncake's with ``modelname``); an (instance, rank)
  registered already is a 409, as in Dynamo.
- ``POST /unregister {"instance_id", "model_name"?, "dp_rank"?}`` → 200, every rank unless
  ``dp_rank`` (404 ``instance N not found``); ``GET /workers`` → Dynamo's list; ``GET /health``
  → 200. An unknown model is an empty answer (Dynamo says 404: it has no indexer for it yet;
  kvsync has simply seen no event for it, as ``/v1/match`` answers).

A ``tenant_id`` other than ``"default"`` keeps its instances apart: their blocks index under
the model ``<model>|<tenant>``, and a query with that tenant asks that model. Mooncake's
``additionalsalt`` is refused (422): kvsync keys blocks by their tokens, not by a salt the
events do not carry.

Raises nothing: every failure is an ``{"error"}`` answer (``kvsync.http.app.Rejected``).
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

from kvsync.errors import IndexUnavailableError
from kvsync.http import schemas
from kvsync.http.views import EndpointView
from kvsync.index import keys, values
from kvsync.index.backend import IndexBackend
from kvsync.model import GPU, Endpoint, EndpointId

T = TypeVar("T")
DEFAULT_TENANT: Final = "default"
REGISTERED: Final = "zmq"  # Dynamo's source of a worker registered with POST /register
_DECODE_QUERY: Final = msgspec.json.Decoder(schemas.DynamoQuery)
_DECODE_QUERY_WIRE: Final = msgspec.json.Decoder(schemas.DynamoQueryWire)
_ENCODE: Final = msgspec.json.Encoder()


class DynamoRejected(Exception):  # noqa: N818  # an answer, as app.Rejected
    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status, self.result, self.message = status, result, message


def model_key(model: str, tenant: str | None) -> str:
    """The kvsync model a (model, tenant) indexes under."""
    return model if tenant in (None, DEFAULT_TENANT) else f"{model}|{tenant}"


@dataclass(frozen=True, slots=True)
class Registration:
    instance_id: schemas.InstanceId
    model_name: str
    tenant_id: str
    block_size: int | None
    endpoint: Endpoint


def _decode(decoder: "msgspec.json.Decoder[T]", body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise DynamoRejected(422, "bad_shape", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise DynamoRejected(400, "bad_json", f"malformed JSON: {exc}") from None


class DynamoApi:
    """The Dynamo / Mooncake routes; registrations are kept here (the HTTP loop's thread)."""

    def __init__(
        self,
        *,
        reader: IndexBackend,
        endpoints: Callable[[], Sequence[EndpointView]],
        register: Callable[[Endpoint], None],
        unregister: Callable[[EndpointId], None],
        max_query_tokens: int,
    ) -> None:
        self._reader = reader
        self._endpoints = endpoints
        self._register = register
        self._unregister = unregister
        self._max_tokens = max_query_tokens
        self.registered: dict[EndpointId, Registration] = {}

    # --- /query ---------------------------------------------------------------------------------
    def query(self, body: bytes, now: float) -> bytes:
        """``POST /query``: Dynamo's or Mooncake's answer, JSON-encoded."""
        try:
            request = _DECODE_QUERY_WIRE.decode(body)
            token_ids: Sequence[int] = keys.json_token_ids(request.token_ids)
        except (msgspec.DecodeError, ValueError):
            token_ids = _decode(_DECODE_QUERY, body).token_ids
            request = _DECODE_QUERY_WIRE.decode(body)
        if len(token_ids) > self._max_tokens:
            raise DynamoRejected(413, "too_many_tokens", f"more than {self._max_tokens} token ids")
        model = request.model_name if request.model_name is not None else request.model
        if model is None:
            raise DynamoRejected(422, "bad_shape", "model_name (or model) is required")
        pods = None if request.instance_id is None else frozenset({str(request.instance_id)})
        query = values.Query(
            model=model_key(model, request.tenant_id),
            token_ids=token_ids,
            lora_name=request.lora_name,
            lora_id=request.lora_id,
            cache_salt=request.cache_salt,
            pods=pods,
        )
        try:
            result = self._reader.match(query, now)
        except IndexUnavailableError as exc:
            raise DynamoRejected(503, "unavailable", f"index unavailable: {exc}") from exc
        if request.model_name is None:
            return _ENCODE.encode(_mooncake(result, request.tenant_id or DEFAULT_TENANT))
        scores: dict[str, dict[str, int]] = {}
        instances: dict[str, schemas.DynamoInstance] = {}
        runs = []
        for found in result.matches:
            size = found.block_size or result.block_size
            pod, rank = found.endpoint.pod, str(found.endpoint.dp_rank)
            tokens = found.matched_blocks * size
            scores.setdefault(pod, {})[rank] = tokens
            runs.append(found.matched_blocks)
            gpu = found.by_medium.get(GPU, 0) * size
            old = instances.get(pod)
            ranks = {} if old is None else old.dp
            ranks[rank] = tokens
            best = tokens if old is None else max(old.longest_matched, tokens)
            instances[pod] = schemas.DynamoInstance(
                longest_matched=best,
                gpu=gpu if old is None else max(old.gpu, gpu),
                cpu=best,
                disk=best,
                dp=ranks,
            )
        # frequencies[d]: the (instance, rank)s holding block d, i.e. with a run longer than d
        ending = [0] * max(runs, default=0)  # runs ending at each depth
        for run in runs:
            ending[run - 1] += 1
        frequencies = list(itertools.accumulate(reversed(ending)))[::-1]
        answer = schemas.DynamoScores(scores=scores, frequencies=frequencies, instances=instances)
        return _ENCODE.encode(answer)

    # --- registration ----------------------------------------------------------------------------
    def register(self, body: bytes) -> schemas.DynamoStatus:
        request = _decode(msgspec.json.Decoder(schemas.DynamoRegister), body)
        model = request.model_name if request.model_name is not None else request.modelname
        if not model:
            raise DynamoRejected(422, "bad_shape", "model_name (or modelname) is required")
        if request.additionalsalt:
            raise DynamoRejected(422, "bad_shape", "additionalsalt is not supported by kvsync")
        endpoint_id = EndpointId(str(request.instance_id), request.dp_rank)
        where = f"instance {request.instance_id} dp_rank {request.dp_rank}"
        if endpoint_id in self.registered:  # as Dynamo: unregister first
            raise DynamoRejected(409, "conflict", f"{where} already registered")
        if endpoint_id in {view.id for view in self._endpoints()}:
            raise DynamoRejected(409, "conflict", f"{where} is a pod kvsync discovered")
        tenant = request.tenant_id or DEFAULT_TENANT
        endpoint = Endpoint(
            id=endpoint_id,
            model=model_key(model, tenant),
            pub=request.endpoint,
            replay=request.replay_endpoint,
        )
        try:
            self._register(endpoint)
        except ValueError as exc:
            raise DynamoRejected(422, "bad_shape", str(exc)) from None
        self.registered[endpoint_id] = Registration(
            request.instance_id, model, tenant, request.block_size, endpoint
        )
        if request.model_name is not None:  # Dynamo's answer
            return schemas.DynamoStatus(status="ok")
        return schemas.DynamoStatus(
            status="registered successfully", instance_id=request.instance_id
        )

    def unregister(self, body: bytes) -> schemas.DynamoStatus:
        request = _decode(msgspec.json.Decoder(schemas.DynamoUnregister), body)
        model = request.model_name if request.model_name is not None else request.modelname
        removed = []
        for endpoint_id, registration in list(self.registered.items()):
            if endpoint_id.pod != str(request.instance_id):
                continue
            if request.dp_rank is not None and endpoint_id.dp_rank != request.dp_rank:
                continue
            if model is not None and registration.model_name != model:
                continue
            if request.tenant_id is not None and registration.tenant_id != request.tenant_id:
                continue
            self._unregister(endpoint_id)
            del self.registered[endpoint_id]
            removed.append(f"{endpoint_id.pod}|{registration.tenant_id}|{endpoint_id.dp_rank}")
        if not removed:
            raise DynamoRejected(404, "not_found", f"instance {request.instance_id} not found")
        if request.modelname is None:  # Dynamo's answer
            return schemas.DynamoStatus(status="ok")
        return schemas.DynamoStatus(status="unregistered successfully", removed_instances=removed)

    def workers(self) -> list[schemas.DynamoWorker]:
        """Every instance (registered or discovered), Dynamo's ``GET /workers`` shape."""
        by_instance: dict[str, list[EndpointView]] = {}
        for view in self._endpoints():
            by_instance.setdefault(view.id.pod, []).append(view)
        workers = []
        for pod, views in sorted(by_instance.items()):
            registration = next((self.registered.get(v.id) for v in views), None)
            listeners = {
                str(v.id.dp_rank): {"endpoint": v.pub, "status": _listener_status(v.state)}
                for v in sorted(views, key=lambda v: v.id.dp_rank)
            }
            statuses = {entry["status"] for entry in listeners.values()}
            status = "pending" if "pending" in statuses else "active"
            workers.append(
                schemas.DynamoWorker(
                    instance_id=pod if registration is None else registration.instance_id,
                    source=REGISTERED if registration is not None else "discovery",
                    status=status,
                    model_name=views[0].model if registration is None else registration.model_name,
                    routing_group=DEFAULT_TENANT
                    if registration is None
                    else registration.tenant_id,
                    block_size=None if registration is None else registration.block_size,
                    endpoints={rank: entry["endpoint"] for rank, entry in listeners.items()},
                    listeners=listeners,
                )
            )
        return workers


def _listener_status(state: str) -> str:
    """Dynamo's listener status: ``pending`` while kvsync replays what it missed (not yet
    answering for it), else ``active`` (subscribed: ``connecting`` is an idle publisher)."""
    return "pending" if state == "replaying" else "active"


def _mooncake(result: values.MatchResult, tenant: str) -> dict[str, dict[str, dict[str, object]]]:
    """Mooncake's ``/query`` answer: per instance the longest match, per medium and per rank."""
    longest: dict[str, int] = {}
    by_rank: dict[str, dict[str, int]] = {}
    by_medium: dict[str, dict[str, int]] = {}
    for found in result.matches:
        size = found.block_size or result.block_size
        pod, tokens = found.endpoint.pod, found.matched_blocks * size
        longest[pod] = max(longest.get(pod, 0), tokens)
        by_rank.setdefault(pod, {})[str(found.endpoint.dp_rank)] = tokens
        media = by_medium.setdefault(pod, {})
        for medium, blocks in found.by_medium.items():
            media[medium] = max(media.get(medium, 0), blocks * size)
    return {
        tenant: {
            pod: {"longest_matched": longest[pod], **by_medium[pod], "DP": by_rank[pod]}
            for pod in longest
        }
    }
