"""A lookup's query and answer: ``/v1/match``'s request → ``Query`` → ``MatchResponse``. Pure
apart from reading the hint index (``kvsync.http.hints``, thread-safe).

``query_of`` picks the context: the request's model and adapter, or for a prompt the model of
the pod that tokenized it (the request's ``model`` may have named an adapter). ``speculative``
asks the hint index for blocks after each endpoint's matched ones, hashing the query only when
the index holds hints for its context. ``match_response`` builds the answer: the backend's
matches in order, each with its speculative blocks and its engine's load
(``kvsync.http.loads``), then endpoints with hints only; with ``load_weight``, every endpoint of
the model ranked by cache and load (``loads.weigh``). Raises nothing.
"""

import time
from collections.abc import Callable, Sequence

from kvsync.http import loads, schemas
from kvsync.http.hints import HintContext, HintIndex
from kvsync.http.tokenize import Tokenized
from kvsync.index import keys, values
from kvsync.model import EndpointId


def query_of(
    request: schemas.MatchRequest, token_ids: Sequence[int], tokenized: Tokenized | None
) -> values.Query:
    pods = None if request.pods is None else frozenset(request.pods)
    model, lora_name = request.model, request.lora_name
    if tokenized is not None:  # the pod's model; the request's model may be an adapter
        model, lora_name = tokenized.model, lora_name or tokenized.lora_name
    return values.Query(
        model=model,
        token_ids=token_ids,
        lora_name=lora_name,
        lora_id=request.lora_id,
        cache_salt=request.cache_salt,
        pods=pods,
    )


def hint_context(query: values.Query, block_size: int) -> HintContext:
    adapter = query.lora_name if query.lora_name is not None else query.lora_id
    return (query.model, adapter, block_size)


def tokenized_by(tokenized: Tokenized) -> schemas.TokenizedBy:
    return schemas.TokenizedBy(pod=tokenized.pod, cached=tokenized.cached)


def speculative(
    hints: HintIndex, query: values.Query, result: values.MatchResult
) -> dict[EndpointId, int]:
    """Hinted blocks after each endpoint's matched ones (none: no hint in this context)."""
    context = hint_context(query, result.block_size)
    if context not in hints.contexts():
        return {}
    block_keys = keys.query_keys(query.token_ids, result.block_size, query.cache_salt)
    matched = {m.endpoint: m.matched_blocks for m in result.matches}
    found = hints.speculative(context, block_keys, matched)
    if query.pods is not None:
        found = {e: n for e, n in found.items() if e.pod in query.pods}
    return found


def match_response(
    request: schemas.MatchRequest,
    query: values.Query,
    result: values.MatchResult,
    speculative: dict[EndpointId, int],
    *,
    event_age: Callable[[EndpointId], float | None],
    tokenized: Tokenized | None,
    load: loads.LoadViews = loads.NO_LOAD,
) -> schemas.MatchResponse:
    """``POST /v1/match``'s answer (``speculative`` is consumed)."""
    tokens = len(query.token_ids)
    seen = time.monotonic()
    matches: list[schemas.EndpointMatch] = []
    for found in result.matches:
        # A context with several block sizes answers each endpoint in its own block size.
        size = found.block_size or result.block_size
        matches.append(
            schemas.EndpointMatchWire(
                pod=found.endpoint.pod,
                dp_rank=found.endpoint.dp_rank,
                matched_blocks=found.matched_blocks,
                matched_tokens=found.matched_blocks * size,
                percent=100 * found.matched_blocks // (tokens // size),
                score=found.score,
                by_medium=dict(found.by_medium),
                last_event_age_s=event_age(found.endpoint),
                speculative_blocks=speculative.pop(found.endpoint, 0),
                load=load.encoded(found.endpoint, seen),
            )
        )
    for endpoint, blocks in sorted(speculative.items()):  # hinted, nothing matched yet
        matches.append(
            schemas.EndpointMatchWire(
                pod=endpoint.pod,
                dp_rank=endpoint.dp_rank,
                matched_blocks=0,
                matched_tokens=0,
                percent=0,
                score=0.0,
                by_medium={},
                last_event_age_s=event_age(endpoint),
                speculative_blocks=blocks,
                load=load.encoded(endpoint, seen),
            )
        )
    if request.load_weight is not None:
        matches = loads.weigh(
            matches,
            weight=request.load_weight,
            model=query.model,
            pods=query.pods,
            query_blocks=result.query_blocks,
            load=load,
            seen=seen,
            event_age=event_age,
        )
    return schemas.MatchResponse(
        model=request.model,
        lora_name=query.lora_name,
        block_size=result.block_size,
        query_blocks=result.query_blocks,
        matches=matches,
        token_count=tokens,
        tokenized=None if tokenized is None else tokenized_by(tokenized),
    )
