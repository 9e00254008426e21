"""The prefix index's registry: endpoint slots, contexts in use order, their eviction. Pure.

Not thread-safe: ``ContextRegistry`` is the base of ``kvsync.index.PrefixIndex``, whose callers
hold one lock; ``now`` is passed in (monotonic seconds). Raises nothing: endpoints and context
keys come from decoded events and valid queries.

* Endpoints are interned to small slot numbers (the bits of a context's holder masks); a
  dropped endpoint's slot is reused, smallest first, so masks stay small. Each slot remembers
  the contexts it stored into, and each pod the mask of its slots (a query's ``pods`` filter).
* Contexts are kept least recently used first (an event or a lookup refreshes one) and evicted
  as a whole: the least recently used one over ``max_contexts``, and any idle (no event, no
  lookup) for ``idle_ttl_seconds``. Blocks (keys) evicted are counted by reason in
  ``evictions``; per-context capacity eviction (``max_keys``) is the index's.
"""

import math
from collections import OrderedDict
from heapq import heappop, heappush

from kvsync.answers import IndexStats, Limits
from kvsync.contexts import Context
from kvsync.model import EndpointId

Adapter = str | int | None  # a LoRA name, else a LoRA integer id, else the base model
ContextKey = tuple[str, Adapter, int]  # (model, adapter, block size)


class ContextRegistry:
    """Endpoint slots and contexts; see the module docstring."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.evictions: dict[str, int] = {}
        self._contexts: OrderedDict[ContextKey, Context] = OrderedDict()  # least recent first
        self._sizes: dict[tuple[str, Adapter], list[int]] = {}  # block sizes per context
        self._slot_of: dict[EndpointId, int] = {}
        self._endpoint_at: list[EndpointId | None] = []
        self._free: list[int] = []  # freed slots, smallest reused first: masks stay small
        self._rank: list[int] | None = None  # slot -> its endpoint's place in EndpointId order
        self._pod_mask: dict[str, int] = {}
        self._in: dict[int, set[ContextKey]] = {}  # slot -> contexts it stored into
        # At or below every context's last_used, so _expire can tell from one comparison that
        # nothing is idle (it only looks at the least recently used context, but ``now`` may go
        # back, so that one is not always the oldest stamp). Every stamp is the ``now`` of an
        # apply or match, which lowers the floor to it first. A NaN stamp makes it -inf.
        self._stamp_floor = math.inf

    def expire(self, now: float) -> dict[str, int]:
        """Drop contexts idle (no event, no lookup) for ``idle_ttl_seconds``; blocks by reason.

        ``apply`` and ``match`` expire as they go; this is the periodic sweep for a fleet that
        has gone quiet (the ingest thread calls it every ``--eviction-interval-seconds``).
        """
        evicted: dict[str, int] = {}
        self._expire(now, evicted)
        return evicted

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        """Forget everything ``endpoint`` holds, in every context; returns blocks dropped."""
        slot = self._slot_of.pop(endpoint, None)
        if slot is None:
            return 0
        dropped = self._clear(slot)
        self._in.pop(slot, None)
        self._endpoint_at[slot] = None  # ranks stay right: a freed slot holds nothing to order
        mask = self._pod_mask[endpoint.pod] & ~(1 << slot)
        if mask:
            self._pod_mask[endpoint.pod] = mask
        else:
            del self._pod_mask[endpoint.pod]
        heappush(self._free, slot)
        return dropped

    def _clear(self, slot: int) -> int:
        dropped = 0
        for ctx_key in self._in.pop(slot, set()):
            ctx = self._contexts[ctx_key]
            dropped += ctx.clear_slot(slot)
            if ctx.is_empty():
                self._drop_context(ctx_key)
        return dropped

    def _slot(self, endpoint: EndpointId) -> int:
        slot = self._slot_of.get(endpoint)
        if slot is None:
            if self._free:
                slot = heappop(self._free)
                self._endpoint_at[slot] = endpoint
            else:
                slot = len(self._endpoint_at)
                self._endpoint_at.append(endpoint)
            self._slot_of[endpoint] = slot
            self._rank = None
            self._pod_mask[endpoint.pod] = self._pod_mask.get(endpoint.pod, 0) | 1 << slot
        return slot

    def _ranks(self) -> list[int]:
        """Per slot, where its endpoint comes in EndpointId order (a freed slot: anywhere), so
        lookups order their answers by comparing ints; recomputed once a slot is (re)assigned."""
        rank = self._rank
        if rank is None:
            rank = self._rank = [0] * len(self._endpoint_at)
            live = sorted((e, slot) for slot, e in enumerate(self._endpoint_at) if e is not None)
            for position, (_, slot) in enumerate(live):
                rank[slot] = position
        return rank

    def _new_context(self, ctx_key: ContextKey, now: float, evicted: dict[str, int]) -> Context:
        while len(self._contexts) >= self.limits.max_contexts:
            oldest = next(iter(self._contexts))
            self._count("max_contexts", len(self._contexts[oldest].table), evicted)
            self._drop_context(oldest)
        ctx = self._contexts[ctx_key] = Context(ctx_key[2], now)
        self._sizes.setdefault(ctx_key[:2], []).append(ctx_key[2])
        return ctx

    def _drop_context(self, ctx_key: ContextKey) -> None:
        del self._contexts[ctx_key]
        for stored_into in self._in.values():
            stored_into.discard(ctx_key)
        sizes = self._sizes[ctx_key[:2]]
        sizes.remove(ctx_key[2])
        if not sizes:
            del self._sizes[ctx_key[:2]]

    def _lower_floor(self, stamp: float) -> None:
        """Keep ``_stamp_floor`` at or below ``stamp`` (a NaN one: -inf, below everything)."""
        floor = self._stamp_floor
        if not stamp >= floor:
            self._stamp_floor = stamp if stamp < floor else -math.inf

    def _expire(self, now: float, evicted: dict[str, int]) -> None:
        if not now >= self._stamp_floor:  # match stamps contexts after expiring
            self._lower_floor(now)
        deadline = now - self.limits.idle_ttl_seconds
        if deadline < self._stamp_floor:
            return  # every context was used after the deadline: the usual case, no walk
        contexts = self._contexts
        while contexts:
            ctx_key, ctx = next(iter(contexts.items()))
            if ctx.last_used > deadline:
                break
            self._count("idle_ttl", len(ctx.table), evicted)
            self._drop_context(ctx_key)
        self._stamp_floor = math.inf
        for ctx in contexts.values():
            self._lower_floor(ctx.last_used)
        self._lower_floor(now)  # match stamps contexts with it next

    def _count(self, reason: str, n: int, evicted: dict[str, int]) -> None:
        if n:
            self.evictions[reason] = self.evictions.get(reason, 0) + n
            evicted[reason] = evicted.get(reason, 0) + n

    def blocks_held(self, endpoint: EndpointId) -> int:
        """Blocks ``endpoint`` holds (any medium or group), over every context."""
        slot = self._slot_of.get(endpoint)
        if slot is None:
            return 0
        return sum(self._contexts[k].table.count(slot) for k in self._in.get(slot, ()))

    def stats(self) -> IndexStats:
        """Sizes over every context."""
        contexts = self._contexts.values()
        sizes = [c.table.sizes() for c in contexts]
        return IndexStats(
            endpoints=len(self._slot_of),
            contexts=len(self._contexts),
            keys=sum(len(c.table) for c in contexts),
            entries=sum(entries for entries, _, _, _ in sizes),
            engine_hashes=sum(mapped for _, mapped, _, _ in sizes),
            bytes_estimate=sum(c.nbytes() for c in contexts),
            blocks={endpoint: self.blocks_held(endpoint) for endpoint in self._slot_of},
        )
