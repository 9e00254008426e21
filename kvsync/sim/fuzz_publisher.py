"""A hostile publisher on loopback: ``kvsync.sim.mutations`` frames on a live XPUB, and hostile
answers to replay requests on a ROUTER. I/O edge (zmq).

Single-threaded on purpose: every method runs on the caller's thread, so a campaign is one
deterministic sequence (send a mutant, answer any replay request, send the next) with no thread
of its own to coordinate. The XPUB sets ``XPUB_NODROP``: when the subscriber's queue is full a
send waits (up to ``send_timeout_s``) instead of dropping, so every frame counted as sent reaches
the daemon, and a daemon that falls behind slows the campaign down rather than hiding frames
from it. The XPUB also shows the subscription (``wait_for_subscriber``), so nothing is sent
before the daemon is connected.

Raises ``SimError`` (``SimTimeoutError`` when no subscriber arrives or a send cannot complete).
"""

from collections import Counter
from collections.abc import Sequence

import zmq

from kvsync.sim.mutations import Mutant, Mutator
from kvsync.sim.records import SimError, SimTimeoutError


class FuzzPublisher:
    """Sends ``Mutator`` output to one subscriber and answers its replay requests."""

    def __init__(
        self,
        mutator: Mutator,
        *,
        ctx: zmq.Context[zmq.Socket[bytes]] | None = None,
        host: str = "127.0.0.1",
        topic_frame: bool = True,
        sndhwm: int = 10_000,
        send_timeout_s: float = 30.0,
    ) -> None:
        """``topic_frame``: answer replays in vLLM >= 0.26's layout ``[b"", topic, seq, p]``."""
        self.mutator, self.topic_frame = mutator, topic_frame
        self._own_ctx = ctx is None
        self._ctx: zmq.Context[zmq.Socket[bytes]] = ctx or zmq.Context()
        self._live = self._ctx.socket(zmq.XPUB)
        self._router = self._ctx.socket(zmq.ROUTER)
        for sock in (self._live, self._router):
            sock.setsockopt(zmq.LINGER, 0)
        self._live.setsockopt(zmq.XPUB_NODROP, 1)
        self._live.setsockopt(zmq.SNDHWM, sndhwm)
        self._live.setsockopt(zmq.SNDTIMEO, int(send_timeout_s * 1000))
        try:
            pub_port = self._live.bind_to_random_port(f"tcp://{host}")
            replay_port = self._router.bind_to_random_port(f"tcp://{host}")
        except zmq.ZMQError as exc:
            self.close()
            raise SimError(f"cannot bind on {host}: {exc}") from exc
        self.pub_address = f"tcp://{host}:{pub_port}"
        self.replay_address = f"tcp://{host}:{replay_port}"
        self.sent: Counter[str] = Counter()  # live messages by mutation kind ("valid_batch": own)
        self.replay_requests = 0
        self.replay_messages = 0  # reply messages sent, end markers included
        self.bad_replay_requests = 0
        self._closed = False

    def wait_for_subscriber(self, timeout: float = 5.0) -> None:
        """Block until the subscription frame reaches the XPUB (the daemon is connected)."""
        if not self._live.poll(int(timeout * 1000)):
            raise SimTimeoutError(f"no subscriber on {self.pub_address} within {timeout} s")
        message = self._live.recv()
        if message[:1] != b"\x01":
            raise SimError(f"expected a subscription frame, got {message[:16]!r}")

    def send(self, frames: Sequence[bytes], label: str = "valid_batch") -> None:
        """Send one live message as it is (waiting while the subscriber's queue is full)."""
        try:
            self._live.send_multipart(list(frames))
        except zmq.Again as exc:
            raise SimTimeoutError(f"the subscriber of {self.pub_address} stopped reading") from exc
        self.sent[label] += 1

    def send_mutant(self) -> Mutant:
        """Send the mutator's next live message, then answer any pending replay request."""
        mutant = self.mutator.live()
        self.send(mutant.frames, mutant.kind.value)
        self.serve_replays()
        return mutant

    def serve_replays(self) -> int:
        """Answer every pending replay request (non-blocking); returns how many were answered.

        A request vLLM would answer (``[identity, b"", start]``) gets ``Mutator.replay_answer``;
        any other is counted and, as vLLM does, not answered.
        """
        answered = 0
        while True:
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return answered
            if len(frames) != 3 or frames[1]:
                self.bad_replay_requests += 1
                continue
            identity, start = frames[0], int.from_bytes(frames[2], "big")
            self.replay_requests += 1
            answered += 1
            for message in self.mutator.replay_answer(start, topic_frame=self.topic_frame):
                # A ROUTER drops what it cannot queue: a lost reply is one more fault to survive.
                self._router.send_multipart([identity, *message])
                self.replay_messages += 1

    def close(self) -> None:
        """Close both sockets (linger 0), and the context if this publisher made it."""
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._live.close(linger=0)
        self._router.close(linger=0)
        if self._own_ctx:
            self._ctx.term()

    def __enter__(self) -> "FuzzPublisher":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
