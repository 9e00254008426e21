"""One kept-alive HTTP/1.1 connection to an engine, for ``GET /metrics``. I/O edge (asyncio).

A scrape is a fixed request and one response, read with httptools' parser (the C parser uvicorn
uses) straight from the protocol's callbacks: no task, future or stream per scrape. A
general-purpose client (httpx, aiohttp) spends several times the CPU per request on machinery a
``GET`` of one path does not use, and kvsync makes hundreds of them a second. Compression is not
asked for (``Accept-Encoding: identity``): inflating costs CPU, and engines sit on the cluster
network.

``MetricsClient.get(done)`` calls ``done`` exactly once, on the loop's thread, with the body of a
200 or a ``LoadError`` (``unreachable``, ``http_status``, ``bad_http``); ``abort()`` (the caller's
timeout) ends the scrape in flight with ``timeout``. After any failure the connection is closed,
since a half-read answer would be read as the start of the next one; the next ``get`` reconnects.
"""

import asyncio
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from kvsync import __version__
from kvsync.errors import LoadError, LoadReason

MAX_BODY_BYTES: Final = 8 * 1024 * 1024  # vLLM's /metrics is tens of kB; far more is not it

Done = Callable[[bytes | LoadError], None]


class _Connection(asyncio.Protocol):
    """One connection: feeds httptools, hands each complete response to the waiting ``done``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._chunks: list[bytes] = []
        self._size = 0
        self._done: Done | None = None
        self.status = 0
        self.keep_alive = True
        self.lost = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's: no subclass of it

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(LoadError(LoadReason.BAD_HTTP, f"HTTP parser: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.fail(LoadError(LoadReason.UNREACHABLE, f"connection closed: {exc or 'by peer'}"))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY_BYTES:
            self.fail(LoadError(LoadReason.BAD_HTTP, f"body over {MAX_BODY_BYTES} bytes"))
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        done, self._done = self._done, None
        body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks, self._size = [], 0
        if done is None:
            self.fail(LoadError(LoadReason.BAD_HTTP, "an answer nobody asked for"))
            return
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
        if self.status != 200:
            done(LoadError(LoadReason.HTTP_STATUS, f"GET /metrics answered {self.status}"))
        else:
            done(body)

    # the client's side
    def send(self, request: bytes, done: Done) -> None:
        assert self.transport is not None  # noqa: S101  # set by connection_made
        self._done = done
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(request)

    def fail(self, error: LoadError) -> None:
        """End the scrape in flight (if any) with ``error`` and close the connection."""
        done, self._done = self._done, None
        if self.transport is not None:
            self.transport.abort()
        if done is not None:
            done(error)


class MetricsClient:
    """``GET {url}/metrics`` over one connection, reopened when it is gone."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise LoadError(LoadReason.UNREACHABLE, f"not an http://host:port address: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._request = (
            f"GET /metrics HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
            f"User-Agent: kvsync/{__version__}\r\nAccept: text/plain\r\n"
            "Accept-Encoding: identity\r\n\r\n"
        ).encode()
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None

    def get(self, done: Done) -> None:
        """Start one scrape; ``done`` gets the body or the ``LoadError``, exactly once."""
        connection = self._connection
        if connection is not None and not connection.lost and connection.transport is not None:
            connection.send(self._request, done)
            return
        self._connecting = asyncio.get_running_loop().create_task(self._connect(done))

    async def _connect(self, done: Done) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            done(LoadError(LoadReason.UNREACHABLE, f"connect: {exc}"))
            return
        except asyncio.CancelledError:
            done(LoadError(LoadReason.TIMEOUT, "no connection in time"))
            raise
        self._connection = connection
        connection.send(self._request, done)

    def abort(self, error: LoadError) -> None:
        """End the scrape in flight with ``error`` (a timeout) and drop the connection."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()  # its done() reports the timeout
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(error)

    def close(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            connecting.cancel()
        connection, self._connection = self._connection, None
        if connection is not None and connection.transport is not None:
            connection.transport.abort()
