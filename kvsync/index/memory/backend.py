"""The in-memory backend: one ``PrefixIndex`` behind its own lock. The lock is the only thing here.

``MemoryBackend`` implements ``kvsync.index.backend.IndexBackend`` for threads of one process:
the ingest thread (the only writer) and the HTTP thread take the lock once per call — a batch,
a lookup, a drop, a sweep — never across I/O, and the ``PrefixIndex`` under it is never touched
otherwise. With an ``on_lock`` hook the wait and hold times of ``apply`` (side ``ingest``) and
``match`` (side ``http``) are reported (``kvsync_index_lock_{wait,hold}_seconds``); the hook is
called after the lock is released. ``index`` and ``lock`` are public for tests and benchmarks
that drive the index directly (hold ``lock`` while doing so). Raises what ``PrefixIndex`` raises
(nothing, for decoded events and valid queries).
"""

import threading
import time
from collections.abc import Mapping, Sequence

from kvsync.index.backend import BackendSettings, LockHook
from kvsync.index.explain import Explanation
from kvsync.index.memory.index import MemoryStats, PrefixIndex
from kvsync.index.values import ApplyOutcome, EndpointContext, MatchResult, Query
from kvsync.model import EndpointId, Event


class MemoryBackend:
    """A ``PrefixIndex`` and its lock; see the module docstring."""

    def __init__(self, index: PrefixIndex | None = None, *, on_lock: LockHook | None = None):
        self.index = PrefixIndex() if index is None else index
        self.lock = threading.Lock()
        self._on_lock = on_lock

    def apply(
        self,
        endpoint: EndpointId,
        context: EndpointContext,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> ApplyOutcome:
        del seq  # nothing outlives the process: ``resume`` has nothing to resume from
        index, hook = self.index, self._on_lock
        if hook is None:
            with self.lock:
                out = index.apply(endpoint, context, events, now)
                out.blocks_held = index.blocks_held(endpoint)
            return out
        asked = time.perf_counter()
        with self.lock:
            held = time.perf_counter()
            out = index.apply(endpoint, context, events, now)
            out.blocks_held = index.blocks_held(endpoint)
        hook("ingest", held - asked, time.perf_counter() - held)
        return out

    def match(self, query: Query, now: float) -> MatchResult:
        hook = self._on_lock
        if hook is None:
            with self.lock:
                return self.index.match(query, now)
        asked = time.perf_counter()
        with self.lock:
            held = time.perf_counter()
            result = self.index.match(query, now)
        hook("http", held - asked, time.perf_counter() - held)
        return result

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        with self.lock:
            return self.index.drop_endpoint(endpoint)

    def expire(self, now: float) -> Mapping[str, int]:
        with self.lock:
            return self.index.expire(now)

    def blocks_held(self, endpoint: EndpointId) -> int:
        with self.lock:
            return self.index.blocks_held(endpoint)

    def explain(self, query: Query, now: float) -> Explanation:
        """The explain capability (``kvsync.index.explain.Explaining``): one lookup's lock."""
        with self.lock:
            return self.index.explain(query, now)

    def stats(self) -> MemoryStats:
        with self.lock:
            return self.index.stats()

    def resume(self, endpoint: EndpointId, ident: str) -> int | None:
        del endpoint, ident
        return None

    def health(self) -> str | None:
        return None

    def flush(self, timeout_s: float = 5.0) -> bool:
        del timeout_s  # every write is visible once apply returns
        return True

    def close(self, timeout_s: float = 5.0) -> bool:
        del timeout_s
        return True


def open_memory(settings: BackendSettings) -> MemoryBackend:
    """``--index-backend memory`` (the ``BACKENDS`` entry)."""
    index = PrefixIndex(
        settings.limits,
        medium_weights=settings.medium_weights,
        default_block_size=settings.default_block_size,
    )
    return MemoryBackend(index, on_lock=settings.on_lock)
