"""The load table and the audit as the HTTP API shows them. I/O edge (the daemon's wiring).

``http`` and ``load`` are sibling stages and do not import each other: ``TableViews`` adapts a
``LoadTable`` to ``http.app.LoadViews`` (an answer's ``load`` per endpoint, the candidates of a
load-weighted answer), ``load_view`` and ``audit_view`` fill the ``GET /v1/pods`` rows.
"""

from collections.abc import Sequence
from typing import Final

import msgspec

from kvsync.audit.ledger import EndpointAudit
from kvsync.http import schemas
from kvsync.load.table import EndpointLoad, LoadTable
from kvsync.model import EndpointId

_ENCODE: Final = msgspec.json.Encoder().encode


def load_view(load: EndpointLoad | None, now: float) -> schemas.EndpointLoad | None:
    """``load`` at ``now`` (``time.monotonic()``) as the API shows it."""
    if load is None:
        return None
    engine = load.engine
    scraped = load.scraped_at
    return schemas.EndpointLoad(
        state=load.state,
        age_s=None if scraped is None else round(max(0.0, now - scraped), 3),
        running=None if engine is None else engine.running,
        waiting=None if engine is None else engine.waiting,
        kv_cache_usage=None if engine is None else engine.kv_cache_usage,
        prefix_hit_rate=None if load.prefix_hit_rate is None else round(load.prefix_hit_rate, 4),
        error=load.error,
    )


def audit_view(audit: EndpointAudit | None) -> schemas.EndpointAudit | None:
    if audit is None:
        return None
    return schemas.EndpointAudit(
        requests=audit.requests,
        exact=audit.exact,
        over=audit.over,
        under=audit.under,
        unknown=audit.unknown,
        predicted_hit_rate=audit.predicted_hit_rate,
        reported_hit_rate=audit.reported_hit_rate,
        engine_hit_rate=audit.engine_hit_rate,
        drift=audit.drift,
    )


_AGE_SENTINEL: Final = 1234567.125  # a float JSON writes exactly, replaced by the age per answer


class TableViews:
    """``http.app.LoadViews`` over a ``LoadTable``.

    An answer carries the load of every endpoint it names, so each endpoint's JSON is encoded
    once per scrape (when its table entry changes: entries are replaced whole) and split around
    its age, which is the only part written per answer."""

    def __init__(self, table: LoadTable) -> None:
        self._table = table
        # endpoint -> (the entry encoded, JSON before the age, JSON after it; or the whole JSON)
        self._encoded: dict[EndpointId, tuple[EndpointLoad, bytes, bytes | None]] = {}

    def encoded(self, endpoint: EndpointId, now: float) -> msgspec.Raw | None:
        load = self._table.get(endpoint)
        if load is None:
            return None
        cached = self._encoded.get(endpoint)
        if cached is None or cached[0] is not load:
            cached = self._encode(endpoint, load)
        _, head, tail = cached
        if tail is None or load.scraped_at is None:
            return msgspec.Raw(head)
        return msgspec.Raw(b"%s%.3f%s" % (head, max(0.0, now - load.scraped_at), tail))

    def _encode(
        self, endpoint: EndpointId, load: EndpointLoad
    ) -> tuple[EndpointLoad, bytes, bytes | None]:
        if len(self._encoded) > 4 * len(self._table.endpoint_ids_all()) + 64:
            self._encoded.clear()  # endpoints gone: forget their JSON
        view = load_view(load, 0.0 if load.scraped_at is None else load.scraped_at)
        assert view is not None  # noqa: S101  # load is not None
        cached: tuple[EndpointLoad, bytes, bytes | None]
        if load.scraped_at is None:
            cached = (load, _ENCODE(view), None)
        else:
            whole = _ENCODE(msgspec.structs.replace(view, age_s=_AGE_SENTINEL))
            head, _, tail = whole.partition(_ENCODE(_AGE_SENTINEL))
            cached = (load, head, tail)
        self._encoded[endpoint] = cached
        return cached

    def figures(self, endpoint: EndpointId) -> tuple[float, float | None] | None:
        load = self._table.get(endpoint)
        engine = None if load is None or load.state != "ok" else load.engine
        if engine is None or engine.running is None or engine.waiting is None:
            return None
        return engine.running + engine.waiting, engine.kv_cache_usage

    def endpoints_of(self, model: str) -> Sequence[EndpointId]:
        return self._table.endpoint_ids(model)
