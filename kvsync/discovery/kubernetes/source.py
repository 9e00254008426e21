"""Kubernetes discovery, I/O: list and watch pods, tell a ``Sink`` which endpoints to follow.

I/O edge (the official ``kubernetes`` client). ``Informer`` runs one
``kvsync.discovery.kubernetes.watch`` ``NamespaceWatch`` thread per watched namespace (one for all
namespaces); the caller (the runtime, main thread) calls ``start()`` and ``stop()``.
``Sink.set_endpoint`` / ``remove_endpoint`` are called from those threads and must return at once
(the subscriber manager queues them for its ingest thread), so the watch loop never waits on
subscriber work.

``synced`` is set once every namespace has applied its first list (readiness); after a 403 it
stays unset and ``last_error()`` says which RBAC rule is missing. ``stats()`` gives plain
counters (re-lists, errors by reason, skipped pods by reason); re-lists and errors are also
pushed to ``kvsync.metrics``. ``stop()`` breaks the blocking reads and joins within its budget.
Raises ``ConfigError`` from ``api_client()`` only.
"""

import threading
from typing import Final, cast

from kubernetes import client, config

from kvsync.discovery.base import Sink
from kvsync.discovery.kubernetes.watch import InformerOptions, NamespaceWatch, WatchStats
from kvsync.errors import ConfigError

ALL_NAMESPACES: Final = ""
__all__ = ["ALL_NAMESPACES", "Informer", "InformerOptions", "Sink", "api_client"]


def api_client() -> client.ApiClient:
    """The kubernetes client's usual configuration: in-cluster, else ``KUBECONFIG``/``~/.kube``."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]  # untyped in the client
    except config.ConfigException:
        try:
            made = config.new_client_from_config()  # type: ignore[no-untyped-call]  # untyped
            return cast(client.ApiClient, made)
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(
                f"no Kubernetes configuration (in-cluster or kubeconfig): {exc}"
            ) from exc
    return client.ApiClient()


class Informer:
    """Pod discovery for the daemon: one ``NamespaceWatch`` thread per namespace (or all)."""

    def __init__(self, api: client.ApiClient, sink: Sink, options: InformerOptions) -> None:
        core = client.CoreV1Api(api)
        namespaces = options.namespaces or (ALL_NAMESPACES,)
        self._lock = threading.Lock()
        self._synced_namespaces: set[str] = set()
        self.synced = threading.Event()
        self.watches = [
            NamespaceWatch(core, sink, ns, options, self._on_synced) for ns in namespaces
        ]

    def _on_synced(self, namespace: str) -> None:
        with self._lock:
            self._synced_namespaces.add(namespace)
            if len(self._synced_namespaces) == len(self.watches):
                self.synced.set()

    def start(self) -> None:
        """Start every namespace's thread; returns at once (wait on ``synced`` for readiness)."""
        for watch in self.watches:
            watch.thread.start()

    def request_reload(self) -> None:
        """Nothing to re-read: the watch follows every change as it happens (SIGHUP is a no-op)."""

    def stop(self, timeout_seconds: float = 1.0) -> bool:
        """Stop every loop; True when all threads ended within the budget."""
        for watch in self.watches:
            watch.stop()
        for watch in self.watches:
            watch.thread.join(timeout_seconds)
        return not any(watch.thread.is_alive() for watch in self.watches)

    def stats(self) -> WatchStats:
        """Counters summed over the namespaces."""
        total = WatchStats()
        for watch in self.watches:
            total.relists += watch.stats.relists
            total.watch_restarts += watch.stats.watch_restarts
            total.events += watch.stats.events
            # dict.copy is one C call: safe against the watch thread adding a key meanwhile
            total.errors.update(dict.copy(watch.stats.errors))
            total.skipped.update(dict.copy(watch.stats.skipped))
        return total

    def last_error(self) -> str | None:
        """The most recent error message of any namespace (for logs and status)."""
        return next((w.last_error for w in self.watches if w.last_error), None)
