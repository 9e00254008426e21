"""uvicorn serving an ASGI app on its own thread. I/O edge.

``HttpServer(app, host, port)`` binds the listening socket in the constructor (on the caller's
thread), so a bad address fails at start-up with a clear ``ConfigError`` and ``port`` is known
even when 0 was asked for. ``start()`` runs uvicorn on a new thread (``http``); ``wait_started()``
polls uvicorn's started flag with a deadline; ``stop()`` sets ``should_exit`` and joins within a
budget (uvicorn finishes in-flight requests for up to that long). uvicorn gets ``log_config=None``
(kvsync.daemon.logs configures logging) and no access log. HTTP parsing is httptools and the
event loop uvloop (both C; uvicorn's pure-Python h11 and the asyncio loop cost about a third more
CPU per lookup, BENCHMARKS.md ``## Serving``). A crash of the server thread is reported
through ``on_crash`` (the runtime exits 1).
"""

import socket
import threading
import time
from collections.abc import Callable

import msgspec
import structlog
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kvsync.errors import ConfigError

log = structlog.get_logger()


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the one answer it writes itself — a 400 for a request
    it cannot parse (e.g. a control byte in a header, which httptools refuses and h11 let
    through) — in the API's error shape, ``{"error": ...}``, like every other rejection."""

    def send_400_response(self, msg: str) -> None:
        body = msgspec.json.encode({"error": f"malformed HTTP request: {msg}"})
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join([*head, body]))
        self.transport.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6); ``ConfigError`` if impossible."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class HttpServer:
    """One uvicorn server on one thread, on a socket bound up front."""

    def __init__(
        self,
        app: ASGIApp,
        host: str,
        port: int,
        *,
        graceful_seconds: float = 5.0,
        on_crash: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._socket = bind(host, port)
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=JsonErrorsProtocol,
            loop="uvloop",
            timeout_graceful_shutdown=max(1, round(graceful_seconds)),
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._on_crash = on_crash
        self._thread = threading.Thread(target=self._run, name="http")

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", ""} else self.host
        host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # thread guard: report once, let the runtime decide
            log.exception("http_server_crashed")
            if self._on_crash is not None:
                self._on_crash(exc)
        finally:
            self._socket.close()

    def start(self) -> None:
        self._thread.start()

    def wait_started(self, timeout_s: float = 10.0) -> bool:
        """True once uvicorn accepts connections; False past the deadline or if it died."""
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.005)  # polling uvicorn's flag: it offers no event to wait on
        return True

    def stop(self, timeout_s: float) -> bool:
        """Ask uvicorn to exit and join; True if the thread ended within ``timeout_s``."""
        self._server.should_exit = True
        if self._thread.ident is None:
            self._socket.close()
            return True
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            return False
        return True

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
