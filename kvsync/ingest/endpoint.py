"""One subscribed endpoint: its sockets, sequence handler, index writer and counters. I/O edge.

Used only by ``kvsync.ingest.manager`` on the ingest thread; the counters are read by other
threads under the manager's stats lock. ``EndpointWriter`` makes one backend call per write (a
batch, or a drop; the backend locks inside, never across socket I/O) and folds what the backend
reports into per-endpoint values. Raises whatever the backend raises (nothing, for decoded
events).
"""

import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Final

import msgspec
import structlog
import zmq

from kvsync.index.backend import IndexBackend
from kvsync.index.values import ApplyOutcome, EndpointContext
from kvsync.ingest.sequencer import EndpointHandler
from kvsync.ingest.sockets import ReplayClient
from kvsync.ingest.values import EndpointStats, Outcome, ReplayResult
from kvsync.model import Endpoint, EndpointId, Event

log = structlog.get_logger()


REMOVAL_MEMORY: Final = 1024  # batches with removals remembered per endpoint (for explain)
RESET_MEMORY: Final = 8  # resets remembered per endpoint


class EndpointWriter:
    """The sequencer's writer for one endpoint: the backend's writes, and what they report.

    One backend call per write (a batch, or a drop); the backend locks inside. Folds the
    outcome into per-endpoint values read under the manager's stats lock.
    """

    def __init__(self, backend: IndexBackend) -> None:
        self._backend = backend
        self.blocks = 0
        self.last_event: float | None = None  # time.monotonic() of the last applied batch
        self.rejected: Counter[str] = Counter()  # events the index refused, by reason (unsent)
        self.unknown_removed = 0  # (unsent) removals of blocks the endpoint did not hold
        # (wall-clock now, seq) of the latest batches that removed blocks: explain names a
        # removal the index remembers at ``now`` by its batch's seq
        self.removals: deque[tuple[float, int]] = deque(maxlen=REMOVAL_MEMORY)
        self.resets: deque[tuple[float, str]] = deque(maxlen=RESET_MEMORY)  # (wall, reason)

    def apply(
        self,
        endpoint: EndpointId,
        context: EndpointContext,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> ApplyOutcome:
        result = self._backend.apply(endpoint, context, events, now, seq)
        if seq is not None and result.removed_blocks:
            self.removals.append((now, seq))
        if result.cleared:  # the engine emptied its cache: explain tells it like a reset
            self.resets.append((now, "all_blocks_cleared"))
        self.blocks = result.blocks_held
        self.last_event = time.monotonic()
        if result.rejected:
            self.rejected.update(result.rejected)
        self.unknown_removed += result.unknown_removed
        return result

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        dropped = self._backend.drop_endpoint(endpoint)
        self.blocks = 0
        return dropped

    def resume(self, endpoint: Endpoint) -> int | None:
        """The seq to continue after, when the backend kept this incarnation's blocks."""
        ident = msgspec.json.encode(
            [endpoint.generation, endpoint.model, endpoint.lora_id, endpoint.pub]
        ).decode()
        resumed = self._backend.resume(endpoint.id, ident)
        if resumed is not None:
            self.blocks = self._backend.blocks_held(endpoint.id)
        return resumed


class Subscription:
    """One endpoint on the ingest thread: SUB socket, replay client, handler and counters."""

    def __init__(
        self,
        endpoint: Endpoint,
        writer: EndpointWriter,
        sub: zmq.Socket[bytes],
        handler: EndpointHandler[EndpointContext],
    ) -> None:
        self.endpoint, self.writer, self.sub, self.handler = endpoint, writer, sub, handler
        self.replay: ReplayClient | None = None
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
            tuple(self.writer.resets),
        )
