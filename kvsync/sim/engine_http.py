"""A simulated pod's engine HTTP server: vLLM's own HTTP API, the parts kvsync calls. I/O edge.

    with EngineHttpServer(model="sim-model", tokenizer=SimTokenizer.trained()) as server:
        server.url                         # http://127.0.0.1:<port>, the pod's Endpoint.engine
        server.add_route("GET", "/metrics", handler)   # more routes: (method, path) -> handler
        server.hits["/tokenize"]           # requests served per path

One real HTTP/1.1 server (the standard library's ``ThreadingHTTPServer``: keep-alive, a thread
per connection) per simulated pod, on loopback. Routes are a table of ``(method, path) ->
handler``; a handler takes an ``EngineRequest`` and returns an ``EngineReply``, runs on the
connection's thread, and may replace a built-in route (a test that needs a failing or stalled
engine does that). A handler that raises answers 500 with vLLM's error shape, never kills the
server.

Built in: ``POST /tokenize``, vLLM's shapes (``vllm/entrypoints/serve/tokenize/protocol.py``):
the completion form ``{"model"?, "prompt", "add_special_tokens"?: true, "return_token_strs"?}``
and the chat form ``{"model"?, "messages", "add_generation_prompt"?: true,
"continue_final_message"?: false, "add_special_tokens"?: false, ...}`` both answer
``{"count", "max_model_len", "tokens", "token_strs"}``. ``model`` may be the base model or one
of the pod's LoRA adapters (they share the base tokenizer); any other is a 404. Errors use the
OpenAI error shape vLLM answers with: ``{"error": {"message", "type", "param", "code"}}``.
"""

import contextlib
import http.server
import socket
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from kvsync.sim.records import SimError
from kvsync.sim.tokenizer import SimTokenizer

DEFAULT_MAX_MODEL_LEN: Final = 16_384
_POLL_INTERVAL_S: Final = 0.05  # how soon close() stops the accept loop
_MAX_BODY: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """One request as a handler sees it."""

    method: str
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> object:
        """The body as JSON; ``msgspec.DecodeError`` if it is not."""
        return msgspec.json.decode(self.body)


@dataclass(frozen=True, slots=True)
class EngineReply:
    """What a handler answers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: object, status: int = 200) -> "EngineReply":
        return cls(status, msgspec.json.encode(value))

    @classmethod
    def error(cls, status: int, message: str, kind: str, param: str | None = None) -> "EngineReply":
        """vLLM's (OpenAI's) error body."""
        body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
        return cls.json(body, status)


Handler = Callable[[EngineRequest], EngineReply]


class _TokenizeCompletion(msgspec.Struct):
    prompt: str
    model: str | None = None
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class _TokenizeChat(msgspec.Struct):
    messages: list[dict[str, Any]]
    model: str | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False


class TokenizeResponse(msgspec.Struct):
    """vLLM's ``TokenizeResponse``."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class EngineHttpServer:
    """The HTTP server of one simulated pod; see the module docstring."""

    def __init__(
        self,
        *,
        model: str,
        tokenizer: SimTokenizer,
        adapters: Sequence[str] = (),
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = tuple(adapters)
        self.max_model_len = max_model_len
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # live connections: close() ends them too
        self._routes: dict[tuple[str, str], Handler] = {("POST", "/tokenize"): self.tokenize}
        try:
            self._server = http.server.ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as exc:
            raise SimError(f"engine HTTP server cannot listen on {host}:{port}: {exc}") from exc
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL_S},
            name=f"engine-http-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # --- routes ---------------------------------------------------------------------------------
    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with ``handler`` (replacing any route there)."""
        with self._lock:
            self._routes[(method.upper(), path)] = handler

    def _route(self, method: str, path: str) -> Handler | None:
        with self._lock:
            self.hits[path] += 1
            return self._routes.get((method, path))

    def tokenize(self, request: EngineRequest) -> EngineReply:
        """``POST /tokenize``: either form, as vLLM answers it."""
        try:
            raw = request.json()
        except msgspec.DecodeError as exc:
            return EngineReply.error(400, f"invalid JSON: {exc}", "BadRequestError")
        if not isinstance(raw, dict):
            return EngineReply.error(400, "the body must be a JSON object", "BadRequestError")
        try:
            if "messages" in raw:
                chat = msgspec.convert(raw, _TokenizeChat)
                model, strs = chat.model, chat.return_token_strs
                tokens = self.tokenizer.chat(
                    chat.messages,
                    add_generation_prompt=chat.add_generation_prompt,
                    continue_final_message=chat.continue_final_message,
                    add_special_tokens=chat.add_special_tokens,
                )
            else:
                completion = msgspec.convert(raw, _TokenizeCompletion)
                model, strs = completion.model, completion.return_token_strs
                tokens = self.tokenizer.encode(
                    completion.prompt, add_special_tokens=completion.add_special_tokens
                )
        except (msgspec.ValidationError, SimError) as exc:
            return EngineReply.error(400, str(exc), "BadRequestError")
        if model is not None and model != self.model and model not in self.adapters:
            return EngineReply.error(
                404, f"The model `{model}` does not exist.", "NotFoundError", "model"
            )
        token_strs = [self.tokenizer.decode([t]) for t in tokens] if strs else None
        return EngineReply.json(
            TokenizeResponse(len(tokens), self.max_model_len, tokens, token_strs)
        )

    # --- serving --------------------------------------------------------------------------------
    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's uvicorn

            def setup(self) -> None:
                super().setup()
                # As uvicorn (vLLM's server): no Nagle delay between the headers and the body
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server._lock:
                    server._open.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._open.discard(self.connection)
                super().finish()

            def _serve(self) -> None:
                path, _, query = self.path.partition("?")
                length = self.headers.get("content-length", "0")
                size = int(length) if length.isdigit() else 0
                if size > _MAX_BODY:
                    self._send(EngineReply.error(413, "body too large", "BadRequestError"))
                    return
                body = self.rfile.read(size) if size else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = EngineRequest(self.command, path, query, headers, body)
                handler = server._route(self.command, path)
                if handler is None:
                    reply = EngineReply.error(404, f"no route {self.command} {path}", "NotFound")
                else:
                    try:
                        reply = handler(request)
                    except Exception as exc:  # noqa: BLE001  # any handler fault is a 500
                        reply = EngineReply.error(500, f"{type(exc).__name__}: {exc}", "Internal")
                self._send(reply)

            def _send(self, reply: EngineReply) -> None:
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", reply.content_type)
                    self.send_header("content-length", str(len(reply.body)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(reply.body)
                except ConnectionError:  # the client gave up (a timeout): nobody to answer
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _serve  # noqa: N815  # http.server's names

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the simulated fleet logs nothing per request."""

        return _Handler

    def close(self) -> None:
        """Stop accepting, end open connections (a pod that went away), close the listening
        socket, join the thread. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        with self._lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> "EngineHttpServer":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
