"""Socket-level work of a simulated publisher's thread: bind, replay, malformed frames. I/O edge.

Called only by the thread that owns the sockets (``kvsync.sim.publisher``). ``bind`` raises
``AddressInUseError`` for a taken port and ``SimError`` for any other bind failure; the rest
raises nothing of its own (zmq errors of a closed socket propagate to the thread guard).
"""

import enum
import errno
import os
from collections.abc import Callable, Iterable
from typing import Final

import zmq

from kvsync.events import wire
from kvsync.sim import eras
from kvsync.sim.records import SimError

GARBAGE: Final = b"\xc1\xc1 not msgpack"  # 0xc1 is the one byte msgpack never uses


class AddressInUseError(SimError):
    """The requested port is taken (pick another base port)."""


class Malformed(enum.StrEnum):
    """Bad messages for decoder tests. Only ``EVENT`` consumes a seq (it is a real batch)."""

    FRAMES = "frames"  # [topic, payload]: two frames
    SEQ = "seq"  # a 4-byte sequence frame
    PAYLOAD = "payload"  # the next seq (not consumed) with bytes that are not msgpack
    EVENT = "event"  # a valid batch of the given events with one broken BlockStored after the first


def malformed_frames(kind: Malformed, topic: bytes, next_seq: int, empty: bytes) -> list[bytes]:
    """The frames of a bad live message; ``empty`` is a valid payload with no events."""
    seq = wire.encode_seq(next_seq)  # the next seq, not consumed
    if kind is Malformed.FRAMES:
        return [topic, empty]
    if kind is Malformed.SEQ:
        return [topic, seq[4:], empty]
    return [topic, seq, GARBAGE]


def serve_replays(
    router: zmq.Socket[bytes],
    era: eras.Era,
    topic: bytes,
    buffer: Iterable[tuple[int, bytes]],
    count: Callable[[str], None],
) -> None:
    """Answer every pending replay request; ``count("replays" | "bad_replay_requests")``.

    vLLM's protocol: ``[identity, b"", start_seq]`` gets one message per buffered batch with
    seq >= start, then the end marker. Any other request is not answered (vLLM logs it). An
    answer is counted before its end marker leaves, so a client that saw the marker sees the count.
    """
    while True:
        try:
            frames = router.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        if len(frames) != 3 or frames[1]:
            count("bad_replay_requests")
            continue
        identity, start = frames[0], int.from_bytes(frames[2], "big")
        for seq, payload in buffer:
            if seq >= start:
                router.send_multipart([identity, *eras.replay_message(era, topic, seq, payload)])
        count("replays")
        router.send_multipart([identity, *eras.replay_end(era)])


def bind(sock: zmq.Socket[bytes], host: str, port: int) -> str:
    """Bind ``sock`` on ``host:port`` (0 = any free port); return the ``tcp://`` address."""
    try:
        if port:
            sock.bind(f"tcp://{host}:{port}")
        else:
            port = sock.bind_to_random_port(f"tcp://{host}")
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUseError(f"tcp://{host}:{port} is in use") from exc
        raise SimError(f"cannot bind tcp://{host}:{port}: {exc}") from exc
    return f"tcp://{host}:{port}"


def drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        return
