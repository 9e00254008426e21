"""What kvsync knows of each endpoint's load: the last figures, their time, and why not. Pure.

``LoadTable`` is written by the scraper thread and read by the HTTP thread without a lock: each
entry is an immutable ``EndpointLoad`` replaced whole, and CPython reads and assigns a dict item
atomically, so a reader sees the old entry or the new one, never half of one. ``set_endpoint``
and ``remove_endpoint`` (discovery's ``Sink``) may come from any thread: they only queue, the
scraper applies them (``take_changes``).

``counters`` gives the engine's prefix-cache counters since kvsync first scraped it (its
epoch; a restart starts a new one) to the audit (``kvsync.audit.ledger``).

The prefix-cache hit rate is the engine's own, over the last ``HIT_RATE_WINDOW_S`` seconds of
its counters (Δhits / Δqueries, tokens), or V0's gauge when that is all the pod exposes. A
counter that goes back (an engine restart) starts the window again.
"""

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Final

from kvsync.audit.ledger import Counters
from kvsync.errors import LoadReason
from kvsync.load.values import EngineLoad
from kvsync.model import Endpoint, EndpointId

HIT_RATE_WINDOW_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class EndpointLoad:
    """One endpoint's load as last scraped. ``scraped_at`` is ``time.monotonic()``."""

    engine: EngineLoad | None = None  # the last good figures (kept while scrapes fail)
    scraped_at: float | None = None  # when those figures were read
    prefix_hit_rate: float | None = None  # the engine's, over the window (module docstring)
    error: LoadReason | None = None  # why the last scrape failed; None: it succeeded
    failures: int = 0  # consecutive failed scrapes

    @property
    def state(self) -> str:
        """``ok``, ``failing`` (the last scrape failed) or ``pending`` (none finished yet)."""
        if self.error is not None:
            return "failing"
        return "pending" if self.scraped_at is None else "ok"


PENDING: Final = EndpointLoad()


class _Window:
    """One engine's (time, queries, hits) samples over the hit-rate window (one epoch)."""

    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, float, float]] = collections.deque()

    def rate(self, now: float, queries: float, hits: float) -> float | None:
        samples = self.samples
        samples.append((now, queries, hits))
        while len(samples) > 2 and samples[1][0] <= now - HIT_RATE_WINDOW_S:
            samples.popleft()
        _, first_queries, first_hits = samples[0]
        asked = queries - first_queries
        return None if asked <= 0 else min(1.0, (hits - first_hits) / asked)


class LoadTable:
    """Endpoint → ``EndpointLoad`` (see the module docstring for the threads)."""

    def __init__(self, engine_url: Callable[[Endpoint], str | None]) -> None:
        """``engine_url``: an endpoint's engine HTTP address; endpoints without one are not
        scraped and have no entry."""
        self.engine_url = engine_url
        self._loads: dict[EndpointId, EndpointLoad] = {}
        self._endpoints: dict[EndpointId, Endpoint] = {}
        self._changes: collections.deque[Endpoint | EndpointId] = collections.deque()
        self._windows: dict[EndpointId, _Window] = {}
        # (epoch, queries, hits) at the first scrape, or at the restart that set them back
        self._baselines: dict[EndpointId, tuple[float, float, float]] = {}

    # -- discovery's Sink (any thread) ------------------------------------------------------

    def set_endpoint(self, endpoint: Endpoint) -> None:
        self._changes.append(endpoint)

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        self._changes.append(endpoint_id)

    # -- the scraper's side -----------------------------------------------------------------

    def take_changes(self) -> bool:
        """Apply queued endpoint changes; True if the set of endpoints changed."""
        changed = False
        while self._changes:
            change = self._changes.popleft()
            changed = True
            if isinstance(change, Endpoint) and self.engine_url(change) is None:
                change = change.id  # no engine address: nothing to scrape
            if isinstance(change, Endpoint):
                if self._endpoints.get(change.id) != change:  # new or changed: start afresh
                    self._loads[change.id] = PENDING
                    self._forget(change.id)
                self._endpoints[change.id] = change
            else:
                self._endpoints.pop(change, None)
                self._loads.pop(change, None)
                self._forget(change)
        return changed

    def _forget(self, endpoint_id: EndpointId) -> None:
        self._windows.pop(endpoint_id, None)
        self._baselines.pop(endpoint_id, None)

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    def record(self, endpoint_id: EndpointId, engine: EngineLoad, now: float) -> None:
        """A good scrape of this endpoint's engine."""
        if endpoint_id not in self._endpoints:
            return  # removed while its scrape was in flight
        rate = engine.prefix_hit_rate
        queries, hits = engine.prefix_queries, engine.prefix_hits
        if queries is not None and hits is not None:
            previous = self._baselines.get(endpoint_id)
            last = self._loads.get(endpoint_id, PENDING).engine
            went_back = (
                last is not None
                and last.prefix_queries is not None
                and last.prefix_hits is not None
                and (queries < last.prefix_queries or hits < last.prefix_hits)
            )
            if previous is None or went_back:  # a first scrape, or a new engine process
                self._baselines[endpoint_id] = (now, queries, hits)
                self._windows[endpoint_id] = _Window()
            rate = self._windows[endpoint_id].rate(now, queries, hits)
        self._loads[endpoint_id] = EndpointLoad(engine=engine, scraped_at=now, prefix_hit_rate=rate)

    def record_failure(self, endpoint_id: EndpointId, reason: LoadReason) -> None:
        """A failed scrape: the last good figures stay, with their age, and the reason."""
        old = self._loads.get(endpoint_id)
        if old is None or endpoint_id not in self._endpoints:
            return
        self._loads[endpoint_id] = replace(old, error=reason, failures=old.failures + 1)

    # -- readers (any thread) ---------------------------------------------------------------

    def get(self, endpoint_id: EndpointId) -> EndpointLoad | None:
        """The endpoint's load; None if kvsync does not scrape it."""
        return self._loads.get(endpoint_id)

    def counters(self, endpoint_id: EndpointId) -> Counters | None:
        """The engine's prefix-cache counters since its epoch (the audit's engine side)."""
        baseline = self._baselines.get(endpoint_id)
        load = self._loads.get(endpoint_id)
        engine = None if load is None else load.engine
        if baseline is None or engine is None:
            return None
        epoch, queries, hits = baseline
        return Counters(
            epoch, (engine.prefix_queries or 0.0) - queries, (engine.prefix_hits or 0.0) - hits
        )

    def items(self) -> Iterator[tuple[EndpointId, EndpointLoad]]:
        return iter(list(self._loads.items()))

    def endpoint_ids_all(self) -> list[EndpointId]:
        """Every scraped endpoint."""
        return list(self._loads)

    def endpoint_ids(self, model: str) -> list[EndpointId]:
        """Every scraped endpoint serving ``model`` (the candidates of a load-weighted answer)."""
        return [i for i, e in list(self._endpoints.items()) if e.model == model]
