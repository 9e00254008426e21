"""Speculative hints: blocks a router just sent to an endpoint, before its engine says so. I/O edge.

Between a routing decision and the engine's BlockStored lie a few hundred milliseconds in which
the next request with the same prefix would be routed as if nothing were cached. ``POST /v1/hint``
puts the request's blocks in this side index for one endpoint for a short TTL; lookups report
them apart, as ``speculative_blocks`` after the matched ones, never in ``matched_blocks``.

A side index outside ``IndexBackend``: it keeps the blocks' chained keys
(``kvsync.index.keys.query_keys``: the same keys every backend holds) per context (model,
adapter, block size) and endpoint, so any backend works with hints unchanged. A hinted block
leaves when:

- the engine confirms it: a lookup finds the endpoint holding it (it is then in
  ``matched_blocks``), and drops it from here (``kvsync_hints_total{result="confirmed"}``);
- its TTL passes (``expired``);
- the endpoint is reset or removed (``reset``: the runtime calls ``forget`` from the ingest
  thread);
- the index is full (``max_blocks``): the oldest hints go first (``evicted``).

Thread-safe (one lock; the HTTP loop and the ingest thread call in). The clock is monotonic and
injectable. Raises nothing.
"""

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from kvsync import metrics
from kvsync.model import EndpointId

DEFAULT_TTL_S: Final = 2.0
MAX_TTL_S: Final = 60.0
DEFAULT_MAX_BLOCKS: Final = 100_000

# (model, adapter: lora_name, else lora_id, else None, block size)
HintContext = tuple[str, str | int | None, int]


class HintIndex:
    """Hinted block keys per (context, endpoint), each with its expiry; see the module docstring."""

    def __init__(
        self,
        *,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_blocks = max_blocks
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[HintContext, dict[EndpointId, dict[int, float]]] = {}
        # every hint in arrival order: (expiry, context, endpoint, its keys), for the sweeps
        self._order: deque[tuple[float, HintContext, EndpointId, tuple[int, ...]]] = deque()
        self._blocks = 0

    def __len__(self) -> int:
        """Hinted blocks held (expired ones may still count until the next sweep)."""
        return self._blocks

    def contexts(self) -> frozenset[HintContext]:
        with self._lock:
            return frozenset(self._held)

    def add(
        self, context: HintContext, endpoint: EndpointId, block_keys: Sequence[int], ttl_s: float
    ) -> int:
        """Hint ``block_keys`` on ``endpoint`` for ``ttl_s``; returns how many blocks it holds
        hinted now (a key hinted again gets the later expiry)."""
        now = self._clock()
        expiry = now + ttl_s
        with self._lock:
            self._sweep(now)
            held = self._held.setdefault(context, {}).setdefault(endpoint, {})
            fresh = 0
            for key in block_keys:
                if key not in held:
                    fresh += 1
                held[key] = expiry
            self._blocks += fresh
            self._order.append((expiry, context, endpoint, tuple(block_keys)))
            metrics.HINTS.labels(result="added").inc(fresh)
            while self._blocks > self.max_blocks and self._order:
                self._drop_oldest("evicted")
            return len(held)

    def speculative(
        self, context: HintContext, query_keys: Sequence[int], matched: Mapping[EndpointId, int]
    ) -> dict[EndpointId, int]:
        """Per endpoint with hints in ``context``: how many query blocks after its ``matched``
        ones are hinted (contiguously). Hinted blocks among the matched are confirmed: dropped."""
        now = self._clock()
        found: dict[EndpointId, int] = {}
        with self._lock:
            self._sweep(now)
            by_endpoint = self._held.get(context)
            if not by_endpoint:
                return found
            confirmed = 0
            for endpoint, held in list(by_endpoint.items()):
                start = matched.get(endpoint, 0)
                for key in query_keys[:start]:
                    if held.pop(key, None) is not None:
                        confirmed += 1
                run = 0
                for key in query_keys[start:]:
                    expiry = held.get(key)
                    if expiry is None or expiry <= now:
                        break
                    run += 1
                if run:
                    found[endpoint] = run
                if not held:
                    del by_endpoint[endpoint]
            if not by_endpoint:
                del self._held[context]
            if confirmed:
                self._blocks -= confirmed
                metrics.HINTS.labels(result="confirmed").inc(confirmed)
        return found

    def forget(self, endpoint: EndpointId) -> int:
        """Drop every hint of ``endpoint`` (reset or removed); returns the blocks dropped."""
        dropped = 0
        with self._lock:
            for context in list(self._held):
                by_endpoint = self._held[context]
                held = by_endpoint.pop(endpoint, None)
                if held:
                    dropped += len(held)
                if not by_endpoint:
                    del self._held[context]
            self._blocks -= dropped
        if dropped:
            metrics.HINTS.labels(result="reset").inc(dropped)
        return dropped

    def _sweep(self, now: float) -> None:
        """Drop the hints whose whole TTL has passed (lock held). Amortised O(1) per hint."""
        order = self._order
        while order and order[0][0] <= now:
            self._drop_oldest("expired")

    def _drop_oldest(self, result: str) -> None:
        expiry, context, endpoint, block_keys = self._order.popleft()
        held = self._held.get(context, {}).get(endpoint)
        if held is None:
            return
        dropped = 0
        for key in block_keys:
            # a key hinted again later carries the later expiry: that hint still holds it
            if held.get(key) == expiry or (result == "evicted" and key in held):
                del held[key]
                dropped += 1
        if not held:
            by_endpoint = self._held[context]
            del by_endpoint[endpoint]
            if not by_endpoint:
                del self._held[context]
        self._blocks -= dropped
        if dropped:
            metrics.HINTS.labels(result=result).inc(dropped)
