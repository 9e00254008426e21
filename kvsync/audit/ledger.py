"""Predicted against reported cached tokens, per model and per endpoint. Pure.

``Audit.judge(report, now)`` compares one routed request's engine-reported ``cached_tokens``
with what kvsync predicted for that endpoint when the router asked (``AnswerMemo``):

- the prediction is the endpoint's matched tokens in that answer (0 when it was not in it),
  capped the way vLLM reuses a prefix: at most ``(prompt tokens - 1) // block size`` blocks,
  since the engine always computes the last prompt token again for its logits (vLLM's
  ``max_cache_hit_length = num_tokens - 1``); a prompt held entirely reports one block less;
- ``error = predicted - reported``: ``exact`` (0), ``over`` (> 0: kvsync promised blocks the
  engine no longer had, e.g. a lost removal), ``under`` (< 0: blocks kvsync did not know of,
  e.g. after a reset, or hits from outside the GPU prefix cache); ``unknown`` when no answer was
  kept for that query (asked too long ago, never asked, or the pod was filtered out).

Per endpoint it sums prompt, predicted and reported tokens of the judged requests, and reads the
engine's own ``vllm:prefix_cache_queries``/``hits`` counters since kvsync first scraped that
engine (``counters``: the load table's), so ``drift = predicted hit rate - engine hit rate``
compares kvsync's view with the engine's. The engine counts every request it ran: the two agree
when the router reports every request it sends there (the demo and the tests do). A new
counting epoch (an engine restart: its counters went back) starts the endpoint's sums again.

``on_verdict`` receives every verdict (the daemon counts them in Prometheus: this module is
pure). Reports are data from the network: with ``known_only`` (the daemon) sums are kept only
for endpoints discovery has set (``Audit`` is a discovery ``Sink``), a removed endpoint's sums are
dropped, and never more than ``max_endpoints`` are kept. Threads: ``judge`` and ``endpoint`` on
the HTTP loop only; ``set_endpoint`` / ``remove_endpoint`` from discovery's thread only touch a
set (the HTTP loop drops the sums of removed endpoints at its next ``judge``).
"""

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from kvsync.audit.memo import AnswerMemo, query_key
from kvsync.model import Endpoint, EndpointId

DEFAULT_MAX_ENDPOINTS: Final = 8192


class Outcome(enum.StrEnum):
    EXACT = "exact"
    OVER = "over"
    UNDER = "under"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Report:
    """What a router tells after an engine answered a request it routed (``POST /v1/feedback``)."""

    model: str
    token_ids: Sequence[int]
    endpoint: EndpointId
    cached_tokens: int  # the engine's usage.prompt_tokens_details.cached_tokens
    lora_name: str | None = None
    lora_id: int | None = None
    cache_salt: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    predicted_tokens: int | None  # None: unknown
    cached_tokens: int
    error_tokens: int | None  # predicted - cached


@dataclass(frozen=True, slots=True)
class Counters:
    """An engine's prefix-cache counters (tokens) since ``epoch``: kvsync's first scrape of it,
    or the restart that last set them back."""

    epoch: float
    queries: float
    hits: float


@dataclass(slots=True)
class _Sums:
    epoch: float | None
    requests: int = 0
    exact: int = 0
    over: int = 0
    under: int = 0
    unknown: int = 0
    prompt_tokens: int = 0
    predicted_tokens: int = 0
    reported_tokens: int = 0


@dataclass(frozen=True, slots=True)
class EndpointAudit:
    """One endpoint's audit since its first report (``GET /v1/pods``)."""

    requests: int
    exact: int
    over: int
    under: int
    unknown: int
    predicted_hit_rate: float | None  # predicted / prompt tokens of the judged requests
    reported_hit_rate: float | None  # reported cached / prompt tokens of the same requests
    engine_hit_rate: float | None  # the engine's counters over the same time
    drift: float | None  # predicted_hit_rate - engine_hit_rate


def _rate(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole > 0 else None


def _no_counters(_endpoint: EndpointId) -> Counters | None:
    return None


class Audit:
    """The ledger; see the module docstring."""

    def __init__(
        self,
        memo: AnswerMemo,
        *,
        counters: Callable[[EndpointId], Counters | None] = _no_counters,
        on_verdict: Callable[[str, Verdict], None] | None = None,
        known_only: bool = False,
        max_endpoints: int = DEFAULT_MAX_ENDPOINTS,
    ) -> None:
        self.memo = memo
        self._counters = counters
        self._on_verdict = on_verdict
        self._known_only = known_only
        self._max_endpoints = max_endpoints
        self._known: set[EndpointId] = set()
        self._sums: dict[EndpointId, _Sums] = {}

    # -- discovery's Sink --------------------------------------------------------------------

    def set_endpoint(self, endpoint: Endpoint) -> None:
        self._known.add(endpoint.id)

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        self._known.discard(endpoint_id)

    def judge(self, report: Report, now: float) -> Verdict:
        key = query_key(
            report.model, report.token_ids, report.lora_name, report.lora_id, report.cache_salt
        )
        answer = self.memo.recall(key, now)
        endpoint = report.endpoint
        predicted: int | None = None
        if answer is not None and (answer.pods is None or endpoint.pod in answer.pods):
            tokens, block_size = answer.matched(endpoint)
            reusable = max(0, (answer.prompt_tokens - 1) // block_size) * block_size
            predicted = min(tokens, reusable)
        if predicted is None:
            verdict = Verdict(Outcome.UNKNOWN, None, report.cached_tokens, None)
        else:
            error = predicted - report.cached_tokens
            outcome = Outcome.EXACT if error == 0 else Outcome.OVER if error > 0 else Outcome.UNDER
            verdict = Verdict(outcome, predicted, report.cached_tokens, error)
        self._add(endpoint, len(report.token_ids), verdict)
        if self._on_verdict is not None:
            self._on_verdict(report.model, verdict)
        return verdict

    def _add(self, endpoint: EndpointId, prompt_tokens: int, verdict: Verdict) -> None:
        sums_by_endpoint = self._sums
        if self._known_only and len(sums_by_endpoint) > len(self._known):
            for gone in [e for e in sums_by_endpoint if e not in self._known]:
                del sums_by_endpoint[gone]
        if endpoint not in sums_by_endpoint and (
            (self._known_only and endpoint not in self._known)
            or len(sums_by_endpoint) >= self._max_endpoints
        ):
            return  # judged and counted, but no sums for an endpoint kvsync does not serve
        counters = self._counters(endpoint)
        epoch = None if counters is None else counters.epoch
        sums = self._sums.get(endpoint)
        if sums is None or (sums.epoch is not None and epoch is not None and epoch != sums.epoch):
            sums = self._sums[endpoint] = _Sums(epoch=epoch)
        elif sums.epoch is None:
            sums.epoch = epoch
        sums.requests += 1
        match verdict.outcome:
            case Outcome.EXACT:
                sums.exact += 1
            case Outcome.OVER:
                sums.over += 1
            case Outcome.UNDER:
                sums.under += 1
            case Outcome.UNKNOWN:
                sums.unknown += 1
                return  # nothing predicted: it counts in no rate
        assert verdict.predicted_tokens is not None  # noqa: S101  # known outcome
        sums.prompt_tokens += prompt_tokens
        sums.predicted_tokens += verdict.predicted_tokens
        sums.reported_tokens += verdict.cached_tokens

    def endpoint(self, endpoint: EndpointId) -> EndpointAudit | None:
        sums = self._sums.get(endpoint)
        if sums is None or (self._known_only and endpoint not in self._known):
            return None
        counters = self._counters(endpoint)
        engine_rate = None
        if counters is not None and counters.epoch == sums.epoch:
            engine_rate = _rate(counters.hits, counters.queries)
        predicted = _rate(sums.predicted_tokens, sums.prompt_tokens)
        return EndpointAudit(
            requests=sums.requests,
            exact=sums.exact,
            over=sums.over,
            under=sums.under,
            unknown=sums.unknown,
            predicted_hit_rate=predicted,
            reported_hit_rate=_rate(sums.reported_tokens, sums.prompt_tokens),
            engine_hit_rate=engine_rate,
            drift=None
            if predicted is None or engine_rate is None
            else round(predicted - engine_rate, 4),
        )
