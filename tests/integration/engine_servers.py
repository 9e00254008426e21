"""Real HTTP servers on 127.0.0.1 that answer ``GET /metrics`` well or badly (test helper).

``MetricsServer(render)`` serves ``render()`` with keep-alive (HTTP/1.1, stdlib
``ThreadingHTTPServer``); ``mode`` turns it hostile: ``hang`` (accepts, never answers),
``garbage`` (200 with a body that is not Prometheus text), ``status`` (503), ``close`` (closes
the connection without a word). ``stop()`` shuts it down: the pod disappears.
"""

import contextlib
import http.server
import socket
import threading
from collections.abc import Callable
from typing import ClassVar


class MetricsServer:
    def __init__(self, render: Callable[[], bytes]) -> None:
        self.render = render
        self.mode = "ok"
        self.requests = 0
        self._release = threading.Event()
        self._connections: set[socket.socket] = set()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout: ClassVar[float] = 5.0  # a socket timeout per handler

            def setup(self) -> None:
                super().setup()
                owner._connections.add(self.connection)

            def do_GET(self) -> None:  # the stdlib's name
                owner.requests += 1
                mode = owner.mode
                if mode == "hang":
                    owner._release.wait(10.0)
                    self.close_connection = True
                    return
                if mode == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, body = 200, owner.render()
                if mode == "garbage":
                    body = b"<html>\x00\xffnot metrics at all</html>\n"
                elif mode == "status":
                    status, body = 503, b"engine is starting\n"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The pod is gone: no listener, and its open connections are cut."""
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):  # already closed by its handler
                connection.shutdown(socket.SHUT_RDWR)
        self._thread.join(5.0)
