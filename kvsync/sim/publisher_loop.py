"""The publisher thread's side of ``kvsync.sim.publisher.Publisher``. I/O edge.

``PublisherLoop`` is the base class holding what runs on the publisher's own thread: one poll over
the wake pipe, the replay ROUTER and the XPUB (for subscription frames); each queued ``Command`` is
handled in order (send or drop a batch, set a fault knob, send raw or malformed frames, restart,
stop), then replay requests are answered from the buffer. ``_count`` and ``_encode`` are also used
by callers' threads (under ``_changed``, and pure respectively). ``Publisher.__init__`` sets every
attribute declared here.

Raises nothing out of the thread: the guard in ``_run`` stores any failure in ``_failure`` for
``flush`` and ``close`` to re-raise as ``SimError``; the sockets are closed when the loop ends.
"""

import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence

import msgspec
import zmq

from kvsync import model, wire
from kvsync.sim import eras, sockets
from kvsync.sim.publisher_commands import (
    Command,
    DropNext,
    Restart,
    SendBatch,
    SendFrames,
    SendMalformed,
    SetReplayCapacity,
    Stop,
)


class PublisherLoop:
    """The poll loop and command handling; state is set by ``Publisher.__init__``."""

    era: eras.Era
    hashes: eras.HashFormat
    dp_rank: int
    _clock: Callable[[], float]
    _topic: bytes
    _xpub: bool
    _live: zmq.Socket[bytes]
    _router: zmq.Socket[bytes] | None
    _wake_r: int
    _commands: queue.SimpleQueue[Command]
    _changed: threading.Condition
    _done: int
    _failure: BaseException | None
    _buffer: deque[tuple[int, bytes]]
    _seq: int
    _drop_live: int
    _drop_replayable: bool
    _counts: dict[str, int]

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
