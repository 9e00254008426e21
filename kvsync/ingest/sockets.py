"""One replay request over a DEALER socket, and the per-endpoint sockets' options. I/O (zmq).

Owned by the ingest thread (``kvsync.ingest.manager``), like every zmq object of the daemon; nothing
here blocks. A replay gets a fresh DEALER: closing it when the replay ends, fails or is superseded
discards any late reply with it, so replies of two requests can never mix. Raises ``zmq.ZMQError``
only from ``open`` (an address libzmq refuses); the caller treats that as a failed replay.

The request is ``[b"", start_seq (8-byte BE)]`` (a ROUTER answers only a 3-frame message
``[identity, b"", start]``); the replies are ``[b"", (topic,) seq, payload]`` up to the end marker,
decoded by ``kvsync.events.decode.decode_replay``. A REQ socket would see only the first reply.
"""

import zmq

from kvsync.events import wire
from kvsync.ingest.values import SocketOptions


def configure(sock: zmq.Socket[bytes], options: SocketOptions) -> None:
    """Options every socket to a publisher gets: no linger, IPv6 hosts, reconnect, heartbeats."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)  # "tcp://[fd00::7]:5557"; IPv4 addresses still work
    sock.setsockopt(zmq.RCVHWM, options.rcvhwm)
    sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, options.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, options.heartbeat_timeout_ms)


def open_sub(
    ctx: zmq.Context[zmq.Socket[bytes]], address: str, topic: str, options: SocketOptions
) -> zmq.Socket[bytes]:
    """A SUB socket connected to a publisher, subscribed to the topic prefix."""
    sock = ctx.socket(zmq.SUB)
    try:
        configure(sock, options)
        sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(address)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


class ReplayClient:
    """The DEALER of one replay request; ``ticket`` ties its replies to the handler's request."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        address: str,
        start: int,
        ticket: int,
        options: SocketOptions,
    ) -> None:
        self.ticket = ticket
        self.socket: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        try:
            configure(self.socket, options)
            self.socket.connect(address)
            # Without ZMQ_IMMEDIATE the connecting pipe exists at once: the request is queued
            # until the TCP connection is up, and this send never blocks.
            self.socket.send_multipart([b"", wire.encode_seq(start)], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            self.socket.close(linger=0)
            raise

    def receive(self) -> list[bytes] | None:
        """The next reply message, or None when none is waiting."""
        try:
            return self.socket.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return None

    def close(self) -> None:
        self.socket.close(linger=0)
