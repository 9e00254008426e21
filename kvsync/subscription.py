"""One subscribed endpoint: its sockets, sequence handler, index writer and counters. I/O edge.

Used only by ``kvsync.subscribers`` on the ingest thread; the counters are read by other threads
under the manager's stats lock. ``LockedWriter`` takes the index lock once per write (a batch, or
a drop) and never across socket I/O, and folds what the index reports into per-endpoint values.
Raises whatever the index raises (nothing, for decoded events).
"""

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import structlog
import zmq

from kvsync import replay
from kvsync.handler import EndpointHandler
from kvsync.index import ApplyOutcome, EndpointContext, PrefixIndex
from kvsync.ingest import EndpointStats, Outcome, ReplayResult
from kvsync.model import Endpoint, EndpointId, Event

log = structlog.get_logger()

LockHook = Callable[[float, float], None]  # (wait, hold) seconds of one ingest write


class LockedWriter:
    """The handler's writer: one lock acquisition per write; keeps blocks held up to date."""

    def __init__(self, index: PrefixIndex, lock: threading.Lock, on_lock: LockHook | None) -> None:
        self._index, self._lock, self._on_lock = index, lock, on_lock
        self.blocks = 0
        self.last_event: float | None = None  # time.monotonic() of the last applied batch
        self.rejected: Counter[str] = Counter()  # events the index refused, by reason (unsent)
        self.unknown_removed = 0  # (unsent) removals of blocks the endpoint did not hold

    def apply(
        self, endpoint: EndpointId, context: EndpointContext, events: Sequence[Event], now: float
    ) -> ApplyOutcome:
        hook = self._on_lock
        asked = time.perf_counter() if hook else 0.0
        with self._lock:
            held = time.perf_counter() if hook else 0.0
            result = self._index.apply(endpoint, context, events, now)
            self.blocks = self._index.blocks_held(endpoint)
        if hook:
            hook(held - asked, time.perf_counter() - held)
        self.last_event = now
        if result.rejected:
            self.rejected.update(result.rejected)
        self.unknown_removed += result.unknown_removed
        return result

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        with self._lock:
            dropped = self._index.drop_endpoint(endpoint)
        self.blocks = 0
        return dropped


class Subscription:
    """One endpoint on the ingest thread: SUB socket, replay client, handler and counters."""

    def __init__(
        self,
        endpoint: Endpoint,
        writer: LockedWriter,
        sub: zmq.Socket[bytes],
        handler: EndpointHandler[EndpointContext],
    ) -> None:
        self.endpoint, self.writer, self.sub, self.handler = endpoint, writer, sub, handler
        self.replay: replay.ReplayClient | None = None
        self.decode_errors = 0
        self.state = handler.state  # copies refreshed under the stats lock, for other threads
        self.last_seq = handler.last_seq
        self.log = log.bind(pod=endpoint.id.pod, dp_rank=endpoint.id.dp_rank)
        self._logged: dict[str, tuple[float, int]] = {}  # event -> (last logged, suppressed)

    def warn(self, event: str, now: float, interval: float, **fields: object) -> None:
        """Log ``event`` the first time, then at most once per ``interval`` with a count."""
        self.note(event, now, interval, level="warning", **fields)

    def note(self, event: str, now: float, interval: float, level: str, **fields: object) -> None:
        """Log ``event`` at ``level``, rate-limited as ``warn`` is."""
        last, suppressed = self._logged.get(event, (float("-inf"), 0))
        if now - last < interval:
            self._logged[event] = (last, suppressed + 1)
            return
        self._logged[event] = (now, 0)
        getattr(self.log, level)(event, suppressed=suppressed, **fields)

    def log_outcome(self, out: Outcome, now: float, interval: float) -> None:
        """Log what went wrong (or was recovered) in one outcome, rate-limited per event."""
        if out.gaps:
            self.warn("sequence_gap", now, interval, last_seq=self.last_seq, gaps=out.gaps)
        for reason in out.resets:
            self.warn("endpoint_reset", now, interval, reason=reason.value)
        for result in out.replays:
            level = "info" if result is ReplayResult.OK else "warning"
            self.note(f"replay_{result.value}", now, interval, level, last_seq=self.last_seq)
        if out.rejected:
            self.warn("events_rejected", now, interval, reasons=sorted(set(out.rejected)))
        if out.held_dropped:
            self.warn("held_batches_dropped", now, interval, count=out.held_dropped)

    def stats(self) -> EndpointStats:
        h = self.handler
        return EndpointStats(
            self.endpoint,
            self.state.value,
            self.last_seq,
            self.writer.last_event,
            self.writer.blocks,
            h.gaps,
            h.replays,
            h.resets,
            self.decode_errors,
            h.duplicates,
            dict(h.reset_reasons),
        )
