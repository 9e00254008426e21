"""A simulated vLLM KV-event publisher: the exact wire format on real ZMQ sockets. I/O edge.

Threads: like vLLM's ``ZmqEventPublisher``, one thread per publisher owns its sockets (the live
PUB/XPUB and the ROUTER replay socket). Every public method is thread-safe: it only puts a command
on a queue and wakes that thread through a pipe, which the thread polls together with its sockets,
so batches, fault knobs and replay requests are handled in order and at once (no polling timer).
``close()`` stops the thread within a bounded join and closes every socket (linger 0).
The thread's side (one poll over the wake pipe, the replay ROUTER and the XPUB for subscription
frames; each queued command handled in order, then replay requests answered from the buffer) is
the second half of the class; the queued commands are in ``kvsync.sim.publisher_commands``. A
failure inside the thread is stored by the guard in ``_run`` and the sockets are closed when the
loop ends.

Wire (see ``kvsync.sim.eras`` for the per-release layouts):
- live: ``[topic, seq (8-byte BE), payload]``; seq counts batches from 0.
- replay: a request ``[identity, b"", start_seq]`` is answered with one message per buffered batch
  with seq >= start, then the end marker; anything else is counted and gets no answer (as vLLM).
- ``dp_rank`` goes in every batch's third element; the caller picks the ports (base + rank).

Fault knobs: ``drop_next`` (seq consumed, message not sent: a gap), ``restart`` (seq back to 0,
replay buffer emptied, nothing said about the old blocks), ``set_replay_capacity`` (a shrunken
buffer leaves a hole), ``send_malformed`` / ``send_raw`` (frames a decoder must reject).

Raises ``SimError`` (``AddressInUseError`` when a port is taken, ``SimTimeoutError`` from the
bounded waits); a failure inside the thread is re-raised by ``flush`` and ``close``.
"""

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import msgspec
import zmq

from kvsync import model
from kvsync.events import wire
from kvsync.sim import eras, sockets
from kvsync.sim.publisher_commands import (
    Command,
    DropNext,
    PublisherStats,
    Restart,
    SendBatch,
    SendFrames,
    SendMalformed,
    SetReplayCapacity,
    Stop,
)
from kvsync.sim.records import SimError, SimTimeoutError
from kvsync.sim.sockets import Malformed


class Publisher:
    """One endpoint's publisher; binds in the constructor, runs until ``close()``."""

    def __init__(
        self,
        *,
        era: eras.Era | str = eras.Era.V0_33,
        hashes: eras.HashFormat | str | None = None,
        topic: str = "",
        dp_rank: int = 0,
        host: str = "127.0.0.1",
        pub_port: int = 0,
        replay_port: int | None = 0,
        xpub: bool = True,
        replay_capacity: int = 10_000,
        hwm: int = 100_000,
        block_size: int = 16,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Ports: 0 = a free port chosen by the OS; ``replay_port=None`` = no replay socket."""
        self.era = eras.Era(era)
        self.hashes = eras.HashFormat(hashes) if hashes else self.era.default_hashes
        if self.era is eras.Era.V0_10_1 and self.hashes is eras.HashFormat.BYTES:
            raise SimError("vLLM 0.10.1 sends int hashes only")
        self.topic = topic
        self.dp_rank = dp_rank
        self.block_size = block_size
        self._topic = topic.encode()
        self._xpub = xpub
        self._clock = clock
        self._own_ctx = ctx is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if ctx is None else ctx
        self._live = self._ctx.socket(zmq.XPUB if xpub else zmq.PUB)
        self._router: zmq.Socket[bytes] | None = None
        self._live.setsockopt(zmq.LINGER, 0)
        self._live.setsockopt(zmq.SNDHWM, hwm)
        if xpub:  # verbose: report every subscriber's subscription, not only the first one
            self._live.setsockopt(zmq.XPUB_VERBOSE, 1)
        try:
            self.pub_address = sockets.bind(self._live, host, pub_port)
            self.replay_address: str | None = None
            if replay_port is not None:
                self._router = self._ctx.socket(zmq.ROUTER)
                self._router.setsockopt(zmq.LINGER, 0)
                self._router.setsockopt(zmq.SNDHWM, max(1000, 2 * (replay_capacity + 1)))
                self.replay_address = sockets.bind(self._router, host, replay_port)
        except SimError:
            self._close_sockets()
            if self._own_ctx:
                self._ctx.term()
            raise
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=replay_capacity)
        self._seq = 0
        self._drop_live = 0
        self._drop_replayable = True
        self._counts = dict.fromkeys(
            ("sent", "dropped", "malformed", "replays", "bad_replay_requests", "subscriptions"), 0
        )
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._changed = threading.Condition()
        self._enqueued = 0
        self._done = 0
        self._failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"sim-publisher-{self.pub_address}")
        self._thread.start()

    # --- public, thread-safe -------------------------------------------------------------------
    def publish(
        self, events: Sequence[model.Event | msgspec.Raw], *, ts: float | None = None
    ) -> None:
        """Publish one batch (one scheduler step's events); ``ts`` defaults to the clock.

        An event may come pre-encoded (``eras.raw_event`` for this publisher's era and hashes):
        it is copied as it is, so replaying recorded traffic costs no per-event encoding.
        """
        payload = self._encode(events, ts)
        self._put(SendBatch(payload))

    def wait_for_subscriber(self, timeout: float = 5.0, count: int = 1) -> None:
        """Block until ``count`` subscriptions have reached the XPUB socket (since start)."""
        if not self._xpub:
            raise SimError("wait_for_subscriber needs an XPUB publisher (xpub=True)")
        with self._changed:
            if not self._changed.wait_for(lambda: self._counts["subscriptions"] >= count, timeout):
                raise SimTimeoutError(f"no subscriber on {self.pub_address} within {timeout} s")

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every command given so far has been handled (batches sent or dropped)."""
        with self._changed:
            target = self._enqueued
            done = self._changed.wait_for(
                lambda: self._done >= target or self._failure is not None, timeout
            )
        self._raise_failure()
        if not done:
            raise SimTimeoutError(f"publisher {self.pub_address} did not flush within {timeout} s")

    def drop_next(self, count: int = 1, *, replayable: bool = True) -> None:
        """The next ``count`` batches take a seq but are not sent live (replayable if asked)."""
        self._put(DropNext(count, replayable))

    def restart(self) -> None:
        """Behave as a new process: seq back to 0, replay buffer emptied."""
        self._put(Restart())

    def set_replay_capacity(self, batches: int) -> None:
        """Keep only the newest ``batches`` batches for replay (a hole for older requests)."""
        self._put(SetReplayCapacity(batches))

    def send_malformed(self, kind: Malformed | str, events: Sequence[model.Event] = ()) -> None:
        """Send one bad message of ``kind`` (see ``Malformed``)."""
        kind = Malformed(kind)
        if kind is Malformed.EVENT:
            good = list(events)
            bad = eras.bad_event(self.era, self.block_size)
            mixed = [*good[:1], bad, *good[1:]]
            payload = eras.encode_batch(
                self.era, mixed, ts=self._clock(), dp_rank=self.dp_rank, hashes=self.hashes
            )
            self._put(SendBatch(payload, malformed=True))
            return
        self._put(SendMalformed(kind))

    def send_raw(self, frames: Sequence[bytes]) -> None:
        """Send these frames on the live socket as they are (no seq consumed)."""
        self._put(SendFrames(list(frames)))

    @property
    def stats(self) -> PublisherStats:
        with self._changed:
            return PublisherStats(next_seq=self._seq, buffered=len(self._buffer), **self._counts)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread, close the sockets (and the context if this publisher made it)."""
        if self._closed:
            return
        self._closed = True
        self._put(Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise SimTimeoutError(f"publisher thread {self._thread.name} did not stop")
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._own_ctx:
            self._ctx.term()
        self._raise_failure()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- caller side ---------------------------------------------------------------------------
    def _put(self, command: Command) -> None:
        if self._closed and not isinstance(command, Stop):
            raise SimError("publisher is closed")
        with self._changed:
            self._enqueued += 1
        self._commands.put(command)
        # A full pipe means the thread is already due to wake up.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\x00")

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise SimError(f"publisher thread failed: {self._failure!r}") from self._failure

    # -- the publisher's own thread: poll loop and command handling --------------------------

    def _encode(self, events: Sequence[model.Event | msgspec.Raw], ts: float | None) -> bytes:
        stamp = self._clock() if ts is None else ts
        return eras.encode_batch(
            self.era, events, ts=stamp, dp_rank=self.dp_rank, hashes=self.hashes
        )

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        if self._router is not None:
            poller.register(self._router, zmq.POLLIN)
        if self._xpub:
            poller.register(self._live, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self._wake_r in ready:
                    sockets.drain_pipe(self._wake_r)
                if not self._handle_commands():
                    return
                if self._router is not None and self._router in ready:
                    sockets.serve_replays(
                        self._router, self.era, self._topic, self._buffer, self._count
                    )
                if self._live in ready:
                    self._read_subscriptions()
        except Exception as exc:  # noqa: BLE001  # thread guard: reported by flush() and close()
            with self._changed:
                self._failure = exc
                self._changed.notify_all()
        finally:
            self._close_sockets()

    def _handle_commands(self) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if isinstance(command, Stop):
                return False
            self._handle(command)
            with self._changed:
                self._done += 1
                self._changed.notify_all()

    def _handle(self, command: Command) -> None:
        match command:
            case SendBatch(payload, malformed):
                if malformed:  # counted before it leaves: a receiver then sees the count
                    self._count("malformed")
                self._send_batch(payload)
            case DropNext(count, replayable):
                self._drop_live, self._drop_replayable = count, replayable
            case SetReplayCapacity(batches):
                self._buffer = deque(self._buffer, maxlen=batches)
            case Restart():
                with self._changed:
                    self._seq, self._drop_live = 0, 0
                    self._buffer.clear()
            case SendFrames(frames):
                self._live.send_multipart(frames)
            case SendMalformed(kind):
                empty = self._encode([], None)
                self._count("malformed")
                self._live.send_multipart(
                    sockets.malformed_frames(kind, self._topic, self._seq, empty)
                )

    def _send_batch(self, payload: bytes) -> None:
        seq = self._seq
        with self._changed:
            self._seq += 1
        if self._drop_live:
            self._drop_live -= 1
            self._count("dropped")
            if self._drop_replayable:
                self._buffer.append((seq, payload))
            return
        self._buffer.append((seq, payload))
        self._count("sent")
        self._live.send_multipart([self._topic, wire.encode_seq(seq), payload])

    def _read_subscriptions(self) -> None:
        while True:
            try:
                message = self._live.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self._count("subscriptions")

    def _count(self, name: str) -> None:
        with self._changed:
            self._counts[name] += 1
            self._changed.notify_all()

    def _close_sockets(self) -> None:
        self._live.close(linger=0)
        if self._router is not None:
            self._router.close(linger=0)
