"""The load thread: every ``--load-interval-seconds``, ``GET /metrics`` of every engine. I/O edge.

One thread runs one asyncio loop (uvloop, as the HTTP server's). Each interval a round queues one
scrape per engine address (a pod's ranks share one ``/metrics``; vLLM labels each rank's figures
with ``engine``) and starts them, at most ``concurrency`` in flight, each bounded by
``timeout_s`` from connect to the last byte (a timer on the loop). A scrape still running when
its next round comes is not doubled. A pod that does not answer, answers garbage or vanishes is
marked in the ``LoadTable`` (reason, consecutive failures; its last good figures stay, with their
age) and costs nothing but its slot: scraping never touches the ingest thread or the index.

Everything per scrape runs in callbacks (the round timer, the connection's protocol, the timeout
timer): no task, future or timeout context per scrape, which at hundreds of scrapes a second
was most of their cost (BENCHMARKS.md, ``## Load``). Bodies are read by a ``MetricsReader`` per
pod (``kvsync.load.parse``).

Endpoints come from discovery through the table (a ``Sink``); an endpoint without an engine
address (the table's ``engine_url`` answers None) is not scraped. Results are counted in
``kvsync_load_scrapes_total{result}`` (``ok`` or a ``LoadReason``); a failure is logged when a
pod starts failing, then at most once per ``LOG_EVERY_S`` while it keeps failing. An unexpected
exception in a scrape's handling is counted (``internal``) and logged: it costs that scrape,
never the thread.
"""

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Final

import structlog
import uvloop

from kvsync import metrics
from kvsync.errors import LoadError, LoadReason
from kvsync.load.client import MetricsClient
from kvsync.load.parse import MetricsReader
from kvsync.load.table import LoadTable
from kvsync.load.values import EngineLoad
from kvsync.model import EndpointId

log = structlog.get_logger()

LOG_EVERY_S: Final = 600.0
_OK: Final = metrics.LOAD_SCRAPES.labels(result="ok")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSettings:
    """``--load-interval-seconds`` (0: no scraping), ``--load-timeout-seconds``,
    ``--load-concurrency``."""

    interval_s: float = 1.0
    timeout_s: float = 0.5
    concurrency: int = 32


@dataclass(slots=True, eq=False)
class _Target:
    """One engine address and the endpoints it reports for (rank → endpoint)."""

    url: str
    ranks: dict[int, EndpointId]
    client: MetricsClient | None = None
    reader: MetricsReader = field(default_factory=MetricsReader)
    busy: bool = False  # queued or in flight
    scrape: int = 0  # the scrape in flight: its answer counts only if it is still this one
    started: float = 0.0
    timer: asyncio.TimerHandle | None = None
    logged_at: float = float("-inf")
    failures: int = 0  # consecutive failed scrapes (logged when they start)


def _assign(
    target: _Target, loads: dict[int | None, EngineLoad]
) -> dict[EndpointId, EngineLoad | None]:
    """Each endpoint's figures: its rank's, else (one rank, one engine) the only ones."""
    only = next(iter(loads.values())) if len(loads) == 1 and len(target.ranks) == 1 else None
    return {endpoint: loads.get(rank, only) for rank, endpoint in target.ranks.items()}


class LoadScraper:
    """Owns the load thread; see the module docstring."""

    def __init__(self, table: LoadTable, settings: LoadSettings) -> None:
        self._table = table
        self._settings = settings
        self._targets: dict[str, _Target] = {}
        self._queue: collections.deque[_Target] = collections.deque()
        self._in_flight = 0
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_round = 0.0
        self._thread = threading.Thread(target=self._guarded, name="kvsync-load", daemon=True)
        self.failed = threading.Event()
        self.rounds = 0  # rounds started (tests wait on it)

    def start(self) -> None:
        if self._settings.interval_s > 0:
            self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop the thread; True if it ended within ``timeout_s`` (or never ran)."""
        self._stopping.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
        if not self._thread.is_alive():
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    # -- the load thread -----------------------------------------------------------------

    def _guarded(self) -> None:
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's: the shutdown below gathers on it
        self._loop = loop
        try:
            if not self._stopping.is_set():
                self._next_round = loop.time()
                loop.call_soon(self._round)
                loop.run_forever()
        except Exception:  # the thread boundary: log once, report
            log.exception("load_failed")
            self.failed.set()
        finally:
            for target in self._targets.values():
                if target.client is not None:
                    target.client.close()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def _round(self) -> None:
        """One round: take discovery's changes, queue every idle target, start what fits."""
        loop = self._loop
        assert loop is not None  # noqa: S101  # set before the first round
        if self._table.take_changes() or self.rounds == 0:
            self._retarget()
        self.rounds += 1
        for target in self._targets.values():
            if not target.busy:
                target.busy = True
                self._queue.append(target)
        self._pump()
        now = loop.time()
        self._next_round = max(self._next_round + self._settings.interval_s, now)
        loop.call_at(self._next_round, self._round)  # a stalled loop does not catch up

    def _retarget(self) -> None:
        """Group the table's endpoints by engine address; keep the connections still in use."""
        wanted: dict[str, dict[int, EndpointId]] = {}
        for endpoint in self._table.endpoints():
            url = self._table.engine_url(endpoint)
            if url is not None:
                wanted.setdefault(url, {})[endpoint.id.dp_rank] = endpoint.id
        for url in list(self._targets):
            if url not in wanted:
                gone = self._targets.pop(url)
                gone.scrape += 1  # an answer still in flight no longer counts
                if gone.client is not None:
                    gone.client.close()
        for url, ranks in wanted.items():
            target = self._targets.get(url)
            if target is None:
                self._targets[url] = _Target(url, ranks)
            else:
                target.ranks = ranks

    def _pump(self) -> None:
        while self._queue and self._in_flight < self._settings.concurrency:
            target = self._queue.popleft()
            if self._targets.get(target.url) is target:  # not removed while queued
                self._begin(target)

    def _begin(self, target: _Target) -> None:
        loop = self._loop
        assert loop is not None  # noqa: S101  # runs on the loop
        self._in_flight += 1
        target.scrape += 1
        scrape = target.scrape
        target.started = time.perf_counter()
        target.timer = loop.call_later(self._settings.timeout_s, self._timed_out, target, scrape)
        try:
            if target.client is None:
                target.client = MetricsClient(target.url)
            target.client.get(lambda answer: self._answered(target, scrape, answer))
        except LoadError as error:
            self._answered(target, scrape, error)

    def _timed_out(self, target: _Target, scrape: int) -> None:
        error = LoadError(LoadReason.TIMEOUT, f"no answer within {self._settings.timeout_s} s")
        client = target.client
        if client is not None:
            client.abort(error)  # answers through _answered
        if target.scrape == scrape and target.busy:  # no client, or it had nothing in flight
            self._answered(target, scrape, error)

    def _answered(self, target: _Target, scrape: int, answer: bytes | LoadError) -> None:
        if target.scrape != scrape or not target.busy:
            return  # a late answer to a scrape already ended (timed out, target removed)
        target.busy = False
        target.scrape += 1
        self._in_flight -= 1
        if target.timer is not None:
            target.timer.cancel()
            target.timer = None
        try:
            self._record(target, answer)
        except Exception as exc:  # a bug must cost one scrape, not the thread
            log.exception("load_scrape_internal_error", engine=target.url)
            self._record(target, LoadError(LoadReason.INTERNAL, repr(exc)))
        finally:
            metrics.LOAD_SCRAPE_DURATION.observe(time.perf_counter() - target.started)
            if not self._stopping.is_set():
                self._pump()

    def _record(self, target: _Target, answer: bytes | LoadError) -> None:
        if isinstance(answer, bytes):
            try:
                loads = target.reader.read(answer)
            except LoadError as error:
                answer = error
            else:
                _OK.inc()
                target.failures = 0
                now = time.monotonic()
                for endpoint, engine in _assign(target, loads).items():
                    if engine is None:
                        self._table.record_failure(endpoint, LoadReason.NOT_VLLM)
                    else:
                        self._table.record(endpoint, engine, now)
                return
        metrics.LOAD_SCRAPES.labels(result=answer.reason).inc()
        if target.client is not None:
            target.client.close()  # a half-read answer must not be read as the next one
        for endpoint in target.ranks.values():
            self._table.record_failure(endpoint, answer.reason)
        now = time.monotonic()
        first = target.failures == 0
        target.failures += 1
        if first or now - target.logged_at >= LOG_EVERY_S:
            target.logged_at = now
            log.warning(
                "load_scrape_failed", engine=target.url, reason=answer.reason, detail=answer.detail
            )
