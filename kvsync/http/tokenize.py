"""Prompts to token ids through the engines' own tokenizers: vLLM's ``POST /tokenize``. I/O edge.

Why through the engine: a prefix match is only true if the router's tokens are exactly the
engine's (same tokenizer, same chat template, same special tokens), and the engine is the one
place that has all three. ``Tokenizer.tokenize(model, request)`` sends the request (vLLM's
completion form ``{"model", "prompt", "add_special_tokens"}`` or chat form ``{"model",
"messages", "add_generation_prompt", ...}``) to a pod serving ``model`` and returns its tokens.

- Which pod: the runtime's ``engines()`` lists every subscribed endpoint's engine address
  (``Endpoint.engine``), deduplicated per pod. Pods whose endpoint model is ``model`` are tried
  first, round robin, those that failed in the last 10 s after the others; if none is,
  ``model`` may name a LoRA adapter (OpenAI-style), so every pod is a candidate and one that does
  not serve it answers 404 and the next is tried. The tokens then belong to (that pod's model,
  adapter ``model``). Pods that refuse the connection or answer 404 are skipped at once; at most
  ``attempts`` pods that answer with an error, and 8 pods in all, per request.
- Cache: a bounded LRU of (model, exact request body) → tokens, by entries and by total tokens
  (uint32: 4 bytes each). Identical requests concurrent with a miss share its round trip.
- Budget: ``timeout_s`` for the whole request, every attempt included; the socket timeouts
  follow the remaining budget, so a stalled engine costs no more than the budget.
- Blocking I/O (``http.client``, keep-alive connections pooled per engine) runs on a small
  thread pool of its own, never on the event loop.

Raises ``TokenizeError`` with the HTTP status the API answers: 503 no pod to ask or none
reachable / serving the model, 502 an engine answered with an error or a malformed body, 504
the budget ran out, 422 an engine refused the prompt itself (a 400: bad input, not a fault).
"""

import asyncio
import dataclasses
import functools
import http.client
import itertools
import threading
import time
import urllib.parse
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import msgspec
import structlog

from kvsync import metrics
from kvsync.http.schemas import TokenId

_IDLE_PER_ENGINE: Final = 8  # keep-alive connections kept per engine address
_LOG_INTERVAL_S: Final = 60.0  # a failure kind is logged at most this often (with a count)
_FAILED_S: Final = 10.0  # an engine that failed is tried after the others for this long
_MAX_CANDIDATES: Final = 8  # pods asked per prompt at most (refusals are fast, but bounded)

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Engine:
    """A pod's engine HTTP server, as the runtime lists it."""

    pod: str
    model: str  # the model its endpoints publish for (the base model)
    url: str  # http://host:port


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenizeSettings:
    timeout_s: float = 2.0
    attempts: int = 2
    cache_entries: int = 4096
    cache_tokens: int = 8_000_000
    workers: int = 8


@dataclass(frozen=True, slots=True)
class Tokenized:
    """The tokens of a prompt and where they came from."""

    tokens: Sequence[int]  # a uint32 memoryview: the index walk reads it as it is
    model: str  # the base model the tokens index under
    lora_name: str | None  # the adapter, when the request's model named one
    pod: str  # the pod whose engine tokenized it
    cached: bool


class TokenizeError(Exception):
    """No tokens for this prompt; ``status`` and ``result`` are the API's answer and label."""

    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result
        self.message = message


class _Answer(msgspec.Struct):
    """vLLM's ``TokenizeResponse``, the part read (``count``/``max_model_len`` are not needed)."""

    tokens: list[TokenId]


class _ErrorDetail(msgspec.Struct):
    message: str = ""


class _ErrorBody(msgspec.Struct):
    """vLLM's error bodies: ``{"error": {"message"...}}`` (recent) or ``{"message"}`` (older)."""

    error: _ErrorDetail | str | None = None
    message: str | None = None
    detail: object = None


_DECODE_ANSWER: Final = msgspec.json.Decoder(_Answer)
_DECODE_ERROR: Final = msgspec.json.Decoder(_ErrorBody)


def _error_text(body: bytes) -> str:
    try:
        error = _DECODE_ERROR.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(error.error, _ErrorDetail):
        return error.error.message
    text = error.error or error.message or error.detail
    return str(text)[:500] if text else body[:200].decode("utf-8", "replace")


class _Connections:
    """Idle keep-alive connections per engine address; any thread."""

    def __init__(self) -> None:
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def post(self, url: str, path: str, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``url + path``; (status, body). ``OSError`` if unreachable,
        ``TimeoutError`` past ``timeout_s``."""
        with self._lock:
            idle = self._idle.get(url)
            connection = idle.pop() if idle else None
        reused = connection is not None
        if connection is None:
            parts = urllib.parse.urlsplit(url)
            connection = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=timeout_s
            )
        headers = {"content-type": "application/json", "accept": "application/json"}
        try:
            if connection.sock is not None:
                connection.sock.settimeout(timeout_s)
            else:
                connection.timeout = timeout_s
            try:
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                connection.close()  # the engine closed an idle connection: one fresh try
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
            payload = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        else:
            with self._lock:
                idle = self._idle.setdefault(url, [])
                if len(idle) < _IDLE_PER_ENGINE:
                    idle.append(connection)
                    connection = None
            if connection is not None:
                connection.close()
        return response.status, payload

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for connection in idle:
                    connection.close()
            self._idle.clear()


class TokenCache:
    """The LRU of (model, request body) → (tokens, base model, adapter, pod)."""

    def __init__(self, entries: int, tokens: int) -> None:
        self._entries, self._tokens = entries, tokens
        self._held = 0
        self._items: OrderedDict[tuple[str, bytes], Tokenized] = OrderedDict()

    def get(self, key: tuple[str, bytes]) -> Tokenized | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: tuple[str, bytes], value: Tokenized) -> None:
        size = len(value.tokens)
        if size > self._tokens or self._entries <= 0:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self._held -= len(old.tokens)
        self._items[key] = value
        self._held += size
        while len(self._items) > self._entries or self._held > self._tokens:
            _, dropped = self._items.popitem(last=False)
            self._held -= len(dropped.tokens)

    def __len__(self) -> int:
        return len(self._items)


class Tokenizer:
    """Prompts to tokens through the engines; see the module docstring. Event-loop side only
    (``tokenize`` is a coroutine of uvicorn's loop; the cache needs no lock there)."""

    def __init__(
        self,
        engines: Callable[[], Sequence[Engine]],
        settings: TokenizeSettings | None = None,
    ) -> None:
        self._engines = engines
        self.settings = settings or TokenizeSettings()
        self._cache = TokenCache(self.settings.cache_entries, self.settings.cache_tokens)
        self._pending: dict[tuple[str, bytes], asyncio.Future[Tokenized]] = {}
        self._connections = _Connections()
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="kvsync-tokenize")
        self._turn = itertools.count()
        self._logged: dict[str, tuple[float, int]] = {}  # failure kind -> (last logged, since)
        self._failed_at: dict[str, float] = {}  # engine url -> monotonic time of its last failure

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def tokenize(self, model: str, body: bytes) -> Tokenized:
        """The tokens of the vLLM ``/tokenize`` request ``body`` for ``model``."""
        key = (model, body)
        found = self._cache.get(key)
        if found is not None:
            metrics.TOKENIZE_CACHE.labels(result="hit").inc()
            return found
        metrics.TOKENIZE_CACHE.labels(result="miss").inc()
        task = self._pending.get(key)
        if task is None:  # else the same prompt is on its way: share that round trip
            # A task of its own: a client that goes away does not cancel it for the others.
            task = asyncio.ensure_future(self._logged_ask(model, body))
            self._pending[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, bytes], task: "asyncio.Future[Tokenized]") -> None:
        del self._pending[key]
        if not task.cancelled() and task.exception() is None:
            self._cache.put(key, dataclasses.replace(task.result(), cached=True))

    def _candidates(self, model: str) -> tuple[list[Engine], bool]:
        engines = self._engines()
        serving = [e for e in engines if e.model == model]
        if serving:
            return serving, False
        return list(engines), True  # perhaps an adapter name: any pod may serve it

    async def _logged_ask(self, model: str, body: bytes) -> Tokenized:
        """``_ask``, its failures logged: the first of a kind, then one a minute with a count."""
        try:
            return await self._ask(model, body)
        except TokenizeError as exc:
            now = time.monotonic()
            last, suppressed = self._logged.get(exc.result, (-_LOG_INTERVAL_S, 0))
            if now - last < _LOG_INTERVAL_S:
                self._logged[exc.result] = (last, suppressed + 1)
            else:
                self._logged[exc.result] = (now, 0)
                log.warning(
                    "tokenize_failed",
                    result=exc.result,
                    status=exc.status,
                    model=model,
                    error=exc.message,
                    suppressed=suppressed,
                )
            raise

    async def _ask(self, model: str, body: bytes) -> Tokenized:
        candidates, as_adapter = self._candidates(model)
        if not candidates:
            raise TokenizeError(
                503, "no_engine", f"no subscribed pod of model {model!r} has an engine address"
            )
        budget = self.settings.timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        start = next(self._turn) % len(candidates)
        order = candidates[start:] + candidates[:start]
        now = time.monotonic()  # engines that failed lately go last (stable: the turn stays)
        order.sort(key=lambda e: now - self._failed_at.get(e.url, -_FAILED_S) < _FAILED_S)
        outcomes: list[str] = []
        answered = 0  # a refused connection or a 404 is fast: only real answers use attempts
        for engine in order[:_MAX_CANDIDATES]:
            remaining = deadline - loop.time()
            if remaining <= 0 or answered >= max(1, self.settings.attempts):
                break
            answer = await self._attempt(engine, body, remaining)
            if isinstance(answer, str):
                outcomes.append(answer)
                if not answer.startswith("not_served"):
                    self._failed_at[engine.url] = time.monotonic()
                answered += answer.startswith("engine_error")
                continue
            self._failed_at.pop(engine.url, None)
            lora_name = model if as_adapter else None
            return Tokenized(answer, engine.model, lora_name, engine.pod, cached=False)
        if not outcomes:
            raise TokenizeError(504, "tokenize_timeout", f"no tokens within {budget} s")
        kinds = {outcome.partition(":")[0] for outcome in outcomes}
        detail = "; ".join(outcomes)
        if kinds == {"not_served"}:
            raise TokenizeError(503, "no_engine", f"no pod serves model {model!r}: {detail}")
        if kinds <= {"unreachable", "not_served"}:
            raise TokenizeError(503, "engine_unreachable", f"no engine reachable: {detail}")
        raise TokenizeError(502, "engine_error", f"the engine failed: {detail}")

    async def _attempt(self, engine: Engine, body: bytes, remaining: float) -> Sequence[int] | str:
        """One engine's tokens, or why not (``kind: detail``, to try the next one); raises
        ``TokenizeError`` for what the next engine would not change (timeout, a refusal)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            status, payload = await asyncio.wait_for(
                loop.run_in_executor(
                    self._pool, self._connections.post, engine.url, "/tokenize", body, remaining
                ),
                remaining,
            )
        except TimeoutError:
            metrics.TOKENIZE_REQUESTS.labels(result="timeout").inc()
            budget = self.settings.timeout_s
            raise TokenizeError(
                504, "tokenize_timeout", f"no tokens within {budget} s ({engine.pod} is silent)"
            ) from None
        except OSError as exc:
            metrics.TOKENIZE_REQUESTS.labels(result="unreachable").inc()
            return f"unreachable: {engine.pod} ({exc})"
        except http.client.HTTPException as exc:
            metrics.TOKENIZE_REQUESTS.labels(result="engine_error").inc()
            return f"engine_error: {engine.pod} ({type(exc).__name__})"
        metrics.TOKENIZE_DURATION.observe(time.perf_counter() - started)
        if status == 200:
            try:
                answer = _DECODE_ANSWER.decode(payload)
            except msgspec.DecodeError as exc:
                metrics.TOKENIZE_REQUESTS.labels(result="engine_error").inc()
                return f"engine_error: {engine.pod} answered no token list ({exc})"
            metrics.TOKENIZE_REQUESTS.labels(result="ok").inc()
            return memoryview(array("I", answer.tokens))
        message = _error_text(payload)
        if status == 404:
            metrics.TOKENIZE_REQUESTS.labels(result="not_served").inc()
            return f"not_served: {engine.pod} ({message})"
        if status in (400, 422):
            metrics.TOKENIZE_REQUESTS.labels(result="rejected").inc()
            raise TokenizeError(
                422, "prompt_rejected", f"the engine of {engine.pod} refused it: {message}"
            )
        metrics.TOKENIZE_REQUESTS.labels(result="engine_error").inc()
        return f"engine_error: {engine.pod} answered {status} ({message})"

    def close(self) -> None:
        """Stop the worker threads and close pooled connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._connections.close()
