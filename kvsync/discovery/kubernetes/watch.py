"""One namespace's pod list/watch loop, I/O: its own thread, the official ``kubernetes`` client.

``kvsync.discovery.kubernetes.source`` starts one ``NamespaceWatch`` per watched namespace (one for
all). Its thread (``informer-<namespace>``) owns the loop; ``stop()`` may be called from any thread.

- List (paged, raw JSON) → ``EndpointTable.replace_all`` → commands; then watch from the list's
  resourceVersion with ``allowWatchBookmarks``, applying each event through the table. A re-list
  of unchanged pods sends no command, so live endpoints keep their state.
- 410 Gone (ERROR event or ``ApiException(410)``) → re-list at once (with backoff if it follows
  a re-list). A stream the server ends is resumed from the last resourceVersion; a dropped one
  too, after backoff. Other API errors → exponential backoff with jitter; 403 is logged as an
  RBAC problem (what to grant) and the namespace is not synced until a list succeeds.
- Pods without endpoints are counted by ``pods.SkipReason`` and logged when a pod's reason
  changes; malformed events are counted and skipped. Only ``stop()`` ends the loop; it never
  raises (the thread guard logs and counts anything unexpected).
"""

import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, cast

import structlog
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kvsync import metrics
from kvsync.discovery import base
from kvsync.discovery.base import EndpointTable, Sink
from kvsync.discovery.kubernetes import pods
from kvsync.discovery.kubernetes.pods import PodDefaults, Skipped
from kvsync.errors import KvsyncError
from kvsync.model import Endpoint

log = structlog.get_logger(__name__)

FORBIDDEN: Final = 403
GONE: Final = 410


# -- the watch stream as data: lines in, events and pod keys out --------------------------


class GoneError(KvsyncError):
    """410: the resourceVersion is too old; re-list. Raised and handled in this module."""


class WatchEventError(KvsyncError):
    """The stream carried an ERROR event other than 410. Raised and handled in this module."""


def raise_error_event(obj: object) -> NoReturn:
    """An ERROR event's object: 410 Gone means re-list, anything else a broken stream."""
    if isinstance(obj, dict) and obj.get("code") == GONE:
        raise GoneError(str(obj.get("message")))
    raise WatchEventError(f"watch ERROR event: {str(obj)[:200]}")


def pod_key(raw: object) -> str | None:
    """``namespace/name`` of a raw pod, if it has them (even when the rest is malformed)."""
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return f"{namespace}/{name}"
    return None


def event_lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """Newline-delimited JSON events as the chunks arrive (one event may span chunks)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


@dataclass(frozen=True, slots=True)
class InformerOptions:
    """How to list and watch; the defaults suit production."""

    namespaces: tuple[str, ...] = ()  # () = all namespaces (needs a ClusterRole)
    selector: str = "model.aibrix.ai/kv-events-enabled=true"
    defaults: PodDefaults = field(default_factory=PodDefaults)
    watch_timeout_seconds: int = 300  # server closes the stream; we resume from the last RV
    request_timeout_seconds: float = 10.0  # connect, and a list read
    page_size: int = 500
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: [0.5, 1] x min(cap, initial x 2^attempt)."""
    ceiling: float = min(cap, initial * 2.0 ** min(attempt, 30))
    return ceiling * rng.uniform(0.5, 1.0)


@dataclass(slots=True)
class WatchStats:
    """Plain counters of one namespace's loop (read by other threads; ints only grow)."""

    relists: int = 0
    watch_restarts: int = 0
    events: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # by reason: gone, http_403, ...
    skipped: Counter[str] = field(default_factory=Counter)  # by pods.SkipReason


class NamespaceWatch:
    """The list/watch loop of one namespace (or all). Runs on its own thread."""

    def __init__(
        self,
        api: client.CoreV1Api,
        sink: Sink,
        namespace: str,
        options: InformerOptions,
        on_synced: Callable[[str], None],
    ) -> None:
        self._api, self._sink, self.namespace, self._options = api, sink, namespace, options
        self._on_synced = on_synced
        self._table = EndpointTable()
        self._skip_reason: dict[str, str] = {}  # pod key → last logged skip reason
        self._stopping = threading.Event()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._rng = random.Random()  # noqa: S311  # jitter, not secrets
        self.stats = WatchStats()
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"informer-{namespace or 'all'}")

    def stop(self) -> None:
        """Ask the loop to end and break the blocking read; returns at once."""
        self._stopping.set()
        response = self._response
        if response is not None:
            response.shutdown()  # thread-safe in urllib3 >= 2.3: the reader gets an error

    def _run(self) -> None:
        failures, resource_version = 0, ""
        while not self._stopping.is_set():
            events_before, relisting = self.stats.events, not resource_version
            try:
                if not resource_version:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version)
                failures = 0
                continue
            except (GoneError, ApiException) as exc:
                status = GONE if isinstance(exc, GoneError) else exc.status
                self._count_error("gone" if status == GONE else f"http_{status}")
                if status == GONE:
                    resource_version = ""
                    if not relisting or self.stats.events > events_before:
                        continue  # the usual case: re-list at once (the server is fine)
                elif isinstance(exc, ApiException):
                    self._report_api_error(exc)
            except (urllib3.exceptions.HTTPError, OSError, WatchEventError) as exc:
                if self._stopping.is_set():
                    break
                broken = "watch_error" if isinstance(exc, WatchEventError) else "connection"
                self._count_error(broken)
                self.last_error = str(exc)
                log.warning("informer_connection_error", namespace=self.namespace, error=str(exc))
            except Exception:  # the thread boundary: log, count, back off, carry on
                self._count_error("crash")
                log.exception("informer_crashed", namespace=self.namespace)
                resource_version = ""
            # any other failure, or 410 straight after a re-list: back off before retrying
            delay = backoff_delay(
                failures,
                self._options.backoff_initial_seconds,
                self._options.backoff_max_seconds,
                self._rng,
            )
            failures += 1
            self._stopping.wait(delay)
        log.info("informer_stopped", namespace=self.namespace)

    def _report_api_error(self, exc: ApiException) -> None:
        where = f"namespace {self.namespace!r}" if self.namespace else "all namespaces"
        if exc.status == FORBIDDEN:
            self.last_error = (
                f"RBAC forbids listing or watching pods in {where}: grant get/list/watch on pods "
                f"to this service account ({exc.reason})"
            )
            log.error("informer_forbidden", namespace=self.namespace, error=self.last_error)
        else:
            self.last_error = f"Kubernetes API error {exc.status} {exc.reason} in {where}"
            log.warning("informer_api_error", namespace=self.namespace, error=self.last_error)

    def _count_error(self, reason: str) -> None:
        self.stats.errors[reason] += 1
        metrics.INFORMER_ERRORS.labels(reason).inc()

    def _list_pods(self, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        """A raw (not deserialised) list or watch call: we read the JSON ourselves."""
        common: dict[str, Any] = {
            "label_selector": self._options.selector or None,
            "_preload_content": False,
            **kwargs,
        }
        if self.namespace:
            response = self._api.list_namespaced_pod(self.namespace, **common)
        else:
            response = self._api.list_pod_for_all_namespaces(**common)
        return cast(urllib3.BaseHTTPResponse, response)

    def _relist(self) -> str:
        """List every matching pod (paged), replace the table, return the list's resourceVersion."""
        self.stats.relists += 1
        metrics.INFORMER_RELISTS.inc()
        desired: dict[str, list[Endpoint]] = {}
        token: str | None = None
        while True:
            response = self._list_pods(
                limit=self._options.page_size,
                _continue=token,
                _request_timeout=self._options.request_timeout_seconds,
            )
            self._response = response  # a long body read can be broken by stop() too
            try:
                body = json.loads(response.data)
            finally:
                self._response = None
                response.release_conn()
            for raw in body.get("items") or ():
                key, endpoints = self._endpoints_of(raw)
                if key is not None:
                    desired[key] = endpoints
            meta = body.get("metadata") or {}
            token = meta.get("continue") or None
            if token is None:
                break
        base.send(self._sink, self._table.replace_all(desired))
        self._skip_reason = {k: v for k, v in self._skip_reason.items() if k in desired}
        self.last_error = None
        log.info("informer_listed", namespace=self.namespace, pods=len(desired))
        self._on_synced(self.namespace)
        return str(meta["resourceVersion"])

    def _watch(self, resource_version: str) -> str:
        """Apply watch events until the server ends the stream; return the last resourceVersion."""
        options = self._options
        response = self._list_pods(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=options.watch_timeout_seconds,
            # a read timeout past the server's own guards against a silently dead connection
            _request_timeout=(options.request_timeout_seconds, options.watch_timeout_seconds + 30),
        )
        self._response = response
        try:
            if self._stopping.is_set():  # stop() ran before _response was visible
                return resource_version
            for line in event_lines(response):
                resource_version = self._apply_line(line, resource_version)
        finally:
            self._response = None
            response.release_conn()
        self.stats.watch_restarts += 1
        return resource_version

    def _apply_line(self, line: bytes, resource_version: str) -> str:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            self._count_error("malformed_event")
            log.warning("informer_malformed_event", namespace=self.namespace, line=line[:200])
            return resource_version
        if kind == "ERROR":
            raise_error_event(obj)
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        version = meta.get("resourceVersion") if isinstance(meta, dict) else None
        self.stats.events += 1
        if kind in ("ADDED", "MODIFIED"):
            key, endpoints = self._endpoints_of(obj)
            if key is not None:
                base.send(self._sink, self._table.put(key, endpoints))
        elif kind == "DELETED":
            key = pod_key(obj)
            if key is not None:
                self._skip_reason.pop(key, None)
                base.send(self._sink, self._table.put(key, []))
        # BOOKMARK carries only the resourceVersion; every event moves it forward
        return version if isinstance(version, str) and version else resource_version

    def _endpoints_of(self, raw: object) -> tuple[str | None, list[Endpoint]]:
        """(pod key or None if unreadable, endpoints or [] when skipped), counting skips."""
        view = pods.read_pod(raw)
        found = (
            view if isinstance(view, Skipped) else pods.pod_endpoints(view, self._options.defaults)
        )
        key = view.key if isinstance(view, pods.PodView) else pod_key(raw)
        if not isinstance(found, Skipped):
            self._skip_reason.pop(key or "", None)
            return key, found
        self.stats.skipped[found.reason] += 1
        if key is None or self._skip_reason.get(key) != found.reason:
            log.info("pod_skipped", pod=key, reason=str(found.reason), detail=found.detail)
            if key is not None:
                self._skip_reason[key] = found.reason
        return key, []
