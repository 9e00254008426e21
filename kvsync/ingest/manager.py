"""The ingest thread: every publisher's SUB socket and replay DEALER behind one poller. I/O (zmq).

``SubscriberManager`` owns the only ``zmq.Context`` of the daemon and every socket in it; they
are created, used and closed on its thread alone. Other threads talk to it through thread-safe
methods: ``set_endpoint`` / ``remove_endpoint`` (discovery; queued, applied within one poll
round), ``snapshot`` / ``last_event_age`` (metrics and the HTTP API), ``stop``.

Per poll round (at most ``poll_ms``, which bounds command and stop latency): apply queued
commands, poll, drain at most ``drain_max`` messages per ready socket (so one busy publisher
cannot starve the others), then fail replays past their deadline. Decoded batches go to the
endpoint's ``kvsync.ingest.sequencer.EndpointHandler``, which decides what to apply and which
replay to request; replays are non-blocking requests on the same loop (``kvsync.ingest.sockets``).

Index writes take the caller's lock once per batch (the HTTP thread reads under the same lock)
and never across socket I/O. Malformed input is counted and logged (rate-limited per endpoint:
the first occurrence, then at most once per ``log_interval_s`` with the count suppressed), never
raised. A message whose handling fails unexpectedly (a bug: the decoder wraps every exception) is
counted (``internal``), logged with its stack, and the endpoint's state dropped; the loop goes on.
Any other unexpected exception ends the thread: it is logged once, ``failed`` is set for the
runtime to act on, and every socket is closed.
"""

import queue
import threading
import time
from collections.abc import Callable

import structlog
import zmq

from kvsync.errors import DecodeError, Reason
from kvsync.events.decode import decode_live, decode_replay
from kvsync.index.backend import IndexBackend
from kvsync.index.values import EndpointContext
from kvsync.ingest.endpoint import EndpointWriter, Subscription
from kvsync.ingest.sequencer import EndpointHandler, lost_batch
from kvsync.ingest.sockets import ReplayClient, open_sub
from kvsync.ingest.values import IngestSettings, IngestStats, Instant, Outcome, State, Totals
from kvsync.model import Batch, Endpoint, EndpointId, ReplayEnd

log = structlog.get_logger()


class SubscriberManager:
    """Subscribes to every endpoint discovery hands it and feeds their batches to the index."""

    def __init__(
        self,
        backend: IndexBackend,
        *,
        settings: IngestSettings | None = None,
        on_lag: Callable[[float], None] | None = None,
        on_reset: Callable[[EndpointId], object] | None = None,
    ) -> None:
        self._backend, self._on_lag, self._on_reset = backend, on_lag, on_reset
        self._settings = settings or IngestSettings()
        self._commands: queue.SimpleQueue[Endpoint | EndpointId] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._stats_lock = threading.Lock()
        self._totals = Totals()
        self._subs: dict[EndpointId, Subscription] = {}
        self._by_socket: dict[zmq.Socket[bytes], tuple[Subscription, bool]] = {}
        self._replaying: set[Subscription] = set()
        self._poller = zmq.Poller()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._thread = threading.Thread(target=self._guarded, name="kvsync-ingest")
        self.failed = threading.Event()  # the ingest thread died of an unexpected error
        self.ticked_at = time.monotonic()  # last start of a poll round, for /livez

    # -- any thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop the loop and close every socket; True when the thread ended within the timeout."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def closed(self) -> bool:
        """Every socket is closed and the zmq context terminated (the thread has ended)."""
        return self._ctx is not None and self._ctx.closed

    def set_endpoint(self, endpoint: Endpoint) -> None:
        """Subscribe, or resubscribe afresh (purging its blocks) if the description changed."""
        self._commands.put(endpoint)

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        """Unsubscribe and purge the endpoint's blocks."""
        self._commands.put(endpoint_id)

    def snapshot(self) -> IngestStats:
        with self._stats_lock:
            return self._totals.freeze(tuple(sub.stats() for sub in self._subs.values()))

    def removal_seq(self, endpoint_id: EndpointId, at: float) -> int | None:
        """The seq of ``endpoint_id``'s batch applied at wall-clock ``at`` that removed blocks,
        if still remembered (the last ``REMOVAL_MEMORY`` such batches)."""
        with self._stats_lock:
            sub = self._subs.get(endpoint_id)
            removals = () if sub is None else tuple(sub.writer.removals)
        return next((seq for when, seq in reversed(removals) if when == at), None)

    def last_event_age(self, endpoint_id: EndpointId) -> float | None:
        """Seconds since the endpoint's last applied batch (None: unknown endpoint, or none yet)."""
        with self._stats_lock:
            sub = self._subs.get(endpoint_id)
            last = None if sub is None else sub.writer.last_event
        return None if last is None else time.monotonic() - last

    # -- ingest thread ---------------------------------------------------------------------

    def _guarded(self) -> None:
        self._ctx = zmq.Context()
        self._ctx.set(zmq.MAX_SOCKETS, self._settings.max_sockets)  # libzmq's default: 1,023
        try:
            self._loop()
        except Exception:  # the thread boundary: log once, report, close
            log.exception("ingest_failed")
            self.failed.set()
        finally:
            for sub in list(self._subs.values()):
                self._close_sockets(sub)
            self._ctx.term()

    def _loop(self) -> None:
        settings = self._settings
        swept_at = time.monotonic()
        while not self._stopping.is_set():
            self.ticked_at = time.monotonic()
            if self.ticked_at - swept_at >= settings.sweep_interval_s:
                swept_at = self.ticked_at
                self._backend.expire(time.time())  # the single writer expires idle contexts
            self._apply_commands()
            for sock, _ in self._poller.poll(settings.poll_ms):
                target = self._by_socket.get(sock)
                if target is None:
                    continue  # closed earlier in this round
                sub, live = target
                if live:
                    self._drain_live(sub)
                else:
                    self._drain_replay(sub)
            if self._replaying:
                now = _now()
                for sub in list(self._replaying):
                    out = sub.handler.on_tick(now)
                    if out is not None:
                        self._after(sub, out, now)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, Endpoint):
                current = self._subs.get(command.id)
                if current is not None and current.endpoint == command:
                    continue
                if current is not None:
                    self._unsubscribe(current, "endpoint_changed")
                self._subscribe(command)
            elif (current := self._subs.get(command)) is not None:
                self._unsubscribe(current, "unsubscribed")

    def _subscribe(self, endpoint: Endpoint) -> None:
        assert self._ctx is not None  # noqa: S101  # set before the loop starts
        try:
            sock = open_sub(self._ctx, endpoint.pub, endpoint.topic, self._settings.sockets)
        except zmq.ZMQError as exc:
            with self._stats_lock:
                self._totals.invalid_endpoints += 1
            log.error("endpoint_invalid", pod=endpoint.id.pod, pub=endpoint.pub, error=str(exc))
            return
        writer = EndpointWriter(self._backend)
        handler = EndpointHandler(
            endpoint.id,
            EndpointContext(endpoint.model, endpoint.lora_id),
            writer,
            has_replay=endpoint.replay is not None,
            settings=self._settings.handler,
        )
        sub = Subscription(endpoint, writer, sock, handler)
        self._poller.register(sock, zmq.POLLIN)
        self._by_socket[sock] = (sub, True)
        with self._stats_lock:
            self._subs[endpoint.id] = sub
        sub.log.info("subscribed", pub=endpoint.pub, replay=endpoint.replay, topic=endpoint.topic)
        resumed = writer.resume(endpoint)
        if resumed is not None:
            sub.log.info("resumed", last_seq=resumed, blocks=writer.blocks)
        now = _now()
        self._after(sub, handler.start(now, resumed), now)

    def _unsubscribe(self, sub: Subscription, event: str) -> None:
        self._close_sockets(sub)
        self._replaying.discard(sub)
        with self._stats_lock:
            del self._subs[sub.endpoint.id]
        dropped = sub.handler.close()
        sub.log.info(event, dropped_blocks=dropped)
        if self._on_reset is not None:
            self._on_reset(sub.endpoint.id)

    def _close_sockets(self, sub: Subscription) -> None:
        self._close_replay(sub)
        if self._by_socket.pop(sub.sub, None) is not None:
            self._poller.unregister(sub.sub)
        sub.sub.close(linger=0)

    def _close_replay(self, sub: Subscription) -> None:
        client, sub.replay = sub.replay, None
        if client is not None:
            self._poller.unregister(client.socket)
            del self._by_socket[client.socket]
            client.close()

    def _drain_live(self, sub: Subscription) -> None:
        sock = sub.sub
        for _ in range(self._settings.drain_max):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            now = _now()
            try:
                try:
                    batch = decode_live(frames)
                except DecodeError as exc:
                    self._decode_error(sub, exc, now)
                    # It may have held removals: the handler drops the state (seq known: in
                    # stream order; unknown: at once, or after the replay in flight).
                    if exc.seq is None:
                        out = sub.handler.on_garbled(now)
                    else:
                        out = sub.handler.on_live(lost_batch(exc), now)
                else:
                    out = sub.handler.on_live(batch, now)
                self._after(sub, out, now)
            except Exception as exc:  # noqa: BLE001  # no input ends the loop
                self._internal_error(sub, exc, now)

    def _drain_replay(self, sub: Subscription) -> None:
        for _ in range(self._settings.drain_max):
            client = sub.replay
            if client is None:
                return  # the replay ended (or was superseded) within this drain
            frames = client.receive()
            if frames is None:
                return
            now = _now()
            item: Batch | ReplayEnd
            try:
                try:
                    item = decode_replay(frames)
                except DecodeError as exc:
                    self._decode_error(sub, exc, now)
                    if exc.seq is None:
                        continue  # unplaceable: the next reply's seq shows the gap (a hole)
                    item = lost_batch(exc)
                self._after(sub, sub.handler.on_replay(client.ticket, item, now), now)
            except Exception as exc:  # noqa: BLE001  # no input ends the loop
                self._internal_error(sub, exc, now)

    def _decode_error(self, sub: Subscription, exc: DecodeError, now: Instant) -> None:
        with self._stats_lock:
            sub.decode_errors += 1
            self._totals.count_decode_error(exc.reason)
        detail, interval = exc.detail[:200], self._settings.log_interval_s
        sub.warn("decode_error", now.mono, interval, reason=exc.reason.value, detail=detail)

    def _internal_error(self, sub: Subscription, exc: Exception, now: Instant) -> None:
        """A message made kvsync itself fail (a bug, not bad input: the decoder wraps every
        exception). The index may hold part of a batch: drop the endpoint's state and go on."""
        with self._stats_lock:
            sub.decode_errors += 1
            self._totals.count_decode_error(Reason.INTERNAL)
        interval = self._settings.log_interval_s  # the stack, rate-limited: a bug to report
        sub.note("message_failed", now.mono, interval, "error", exc_info=exc)
        self._after(sub, sub.handler.on_garbled(now), now)

    def _after(self, sub: Subscription, out: Outcome, now: Instant) -> None:
        """Perform the socket work an outcome asks for, then count and log it."""
        state = sub.handler.state
        if out.replay is not None:
            self._close_replay(sub)
            self._open_replay(sub, out.replay.start, out.replay.ticket)
        elif sub.replay is not None and state is not State.REPLAYING:
            self._close_replay(sub)
        if state is not sub.state:
            if state is State.REPLAYING:
                self._replaying.add(sub)
            else:
                self._replaying.discard(sub)
        writer = sub.writer
        with self._stats_lock:
            sub.state, sub.last_seq = state, sub.handler.last_seq
            self._totals.add(out)
            for reason in out.resets:
                writer.resets.append((now.wall, reason.value))
            if writer.rejected or writer.unknown_removed:
                self._totals.add_index_rejections(writer.rejected, writer.unknown_removed)
                writer.rejected.clear()
                writer.unknown_removed = 0
        if out.resets and self._on_reset is not None:
            self._on_reset(sub.endpoint.id)
        if out.lags and self._on_lag is not None:
            for lag in out.lags:
                self._on_lag(lag)
        if out.gaps or out.resets or out.replays or out.rejected or out.held_dropped:
            sub.log_outcome(out, now.mono, self._settings.log_interval_s)

    def _open_replay(self, sub: Subscription, start: int, ticket: int) -> None:
        address = sub.endpoint.replay
        assert self._ctx is not None  # noqa: S101  # set before the loop starts
        assert address is not None  # noqa: S101  # the handler asks only when there is one
        try:
            client = ReplayClient(self._ctx, address, start, ticket, self._settings.sockets)
        except zmq.ZMQError as exc:  # a bad address: the handler's deadline fails the replay
            interval = self._settings.log_interval_s
            sub.warn("replay_unavailable", time.monotonic(), interval, error=str(exc))
            return
        sub.replay = client
        self._poller.register(client.socket, zmq.POLLIN)
        self._by_socket[client.socket] = (sub, False)
        sub.log.debug("replay_requested", start=start)


def _now() -> Instant:
    return Instant(time.monotonic(), time.time())
