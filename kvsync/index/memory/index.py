"""The prefix index: which endpoint holds which blocks, and the longest-prefix lookup. Pure.

Not thread-safe: the ingest thread is the only writer and HTTP readers share one lock with it,
taken by the callers per batch (``apply``) and per lookup (``match``). ``now`` is passed in
(monotonic seconds): the index reads no clock. Raises nothing for decoded events and valid
queries; bad input is counted in ``ApplyOutcome`` instead.

Semantics (the design's §3 "Keys" and §5 "HTTP API v1"; docs/architecture.md, "index"):

* A context is (model, adapter, block size). The adapter is the event's ``lora_name``, else its
  ``lora_id``, else the endpoint's ``EndpointContext.lora_id``, else none. Queries select it
  with ``lora_name`` or ``lora_id``.
* Blocks are keyed by ``kvsync.index.keys`` (tokens + normalised extra keys), chained inside an
  event
  and through ``parent_block_hash``, which resolves through that endpoint's engine-hash map. A
  BlockStored whose parent the endpoint never stored (or no longer holds a mapping for) is not
  indexed at all: rooting it would invent matches. It is counted as ``unknown_parent``.
* Holders are per (endpoint, medium, group); a block is held while any copy remains. A removal
  affects exactly the named copies of the sending endpoint; descendants stay.
* Eviction (on the event path, and idle expiry on lookups too), the blocks (keys) it dropped
  counted by reason in ``evictions``: ``max_contexts`` (least recently used context),
  ``max_keys`` (least recently stored leaf keys of a context over its limit, down to 97 % of
  it), ``idle_ttl`` (a context with no event and no lookup for ``idle_ttl_seconds``).

Endpoints are interned to small slot numbers (the bits of a context's holder masks); a dropped
endpoint's slot is reused, smallest first, so masks stay small. Each slot remembers the contexts
it stored into, and each pod the mask of its slots (a query's ``pods`` filter). Contexts are kept
least recently used first (an event or a lookup refreshes one) and evicted as a whole.
"""

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Final

from kvsync.index import keys
from kvsync.index.explain import BlockMemory, EndpointRun, Explanation
from kvsync.index.keys import u64, u64s
from kvsync.index.memory import lookup
from kvsync.index.memory.context import PLAIN, Context, Copy
from kvsync.index.values import (
    ANY_MEDIUM,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LIMITS,
    DEFAULT_MEDIUM_WEIGHTS,
    EVICTION_LOW_WATERMARK,
    OTHER_MEDIUM_WEIGHT,
    UNKNOWN_PARENT,
    ApplyOutcome,
    EndpointContext,
    IndexStats,
    Limits,
    Match,
    MatchResult,
    Query,
)
from kvsync.model import (
    GPU,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EndpointId,
    Event,
)

DEFAULT_REMEMBER: Final = 65_536  # removed / evicted blocks remembered for explain
_GONE_CONTEXTS: Final = 1024  # evicted contexts remembered for explain

STORED: Final = "BlockStored"
REMOVED: Final = "BlockRemoved"
CLEARED: Final = "AllBlocksCleared"
_OTHER: Final = "other"  # not an event the index knows: it ends a run of removals, no more

# The kind (one of the names above) by event class, filled as classes are met: decoded events
# are wire subclasses of the model's records, and one dict lookup costs half an isinstance.
_KINDS: dict[type, str] = {}


def _kind(cls: type) -> str:
    kind = (
        REMOVED
        if issubclass(cls, BlockRemoved)
        else STORED
        if issubclass(cls, BlockStored)
        else CLEARED
        if issubclass(cls, AllBlocksCleared)
        else _OTHER
    )
    _KINDS[cls] = kind
    return kind


Adapter = str | int | None  # a LoRA name, else a LoRA integer id, else the base model
ContextKey = tuple[str, Adapter, int]  # (model, adapter, block size)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryStats(IndexStats):
    """``IndexStats`` plus what only an in-process table can count."""

    engine_hashes: int  # engine hash -> key mappings, over every endpoint
    bytes_estimate: int  # the tables' allocations plus an estimate for the side dicts


class PrefixIndex:
    """Contexts, holders and the longest-prefix lookup; see the module docstring."""

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        medium_weights: Mapping[str, float] = DEFAULT_MEDIUM_WEIGHTS,
        default_block_size: int = DEFAULT_BLOCK_SIZE,
        remember: int = DEFAULT_REMEMBER,
    ) -> None:
        self.limits = limits
        # For explain, capped, oldest forgotten first: (context, key, slot; -1 for every slot)
        # of blocks removed or evicted, and contexts evicted whole. 0 turns both off.
        self.remember = remember
        # Runs of keys, as released (one append per removal run, no per-block Python work on
        # the ingest path): (context, slot or -1, keys, what happened); explain scans it.
        self._memory: deque[tuple[ContextKey, int, list[int], BlockMemory]] = deque()
        self._remembered = 0  # keys in _memory
        self._gone: OrderedDict[ContextKey, BlockMemory] = OrderedDict()
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
        # "*" (the config's "any other medium") becomes the fallback weight of every lookup.
        self.medium_weights = {m: w for m, w in medium_weights.items() if m != ANY_MEDIUM}
        self.other_medium_weight = medium_weights.get(ANY_MEDIUM, OTHER_MEDIUM_WEIGHT)
        self.default_block_size = default_block_size

    # -- endpoint slots and contexts ------------------------------------------------------

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
            self._context_gone(oldest, "max_contexts", now)
            self._drop_context(oldest)
        self._gone.pop(ctx_key, None)
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
            self._context_gone(ctx_key, "idle_ttl", now)
            self._drop_context(ctx_key)
        self._stamp_floor = math.inf
        for ctx in contexts.values():
            self._lower_floor(ctx.last_used)
        self._lower_floor(now)  # match stamps contexts with it next

    def _context_gone(self, ctx_key: ContextKey, reason: str, now: float) -> None:
        if self.remember:
            self._gone[ctx_key] = BlockMemory("evicted", now, reason)
            if len(self._gone) > _GONE_CONTEXTS:
                self._gone.popitem(last=False)

    def _remember(
        self, ctx_key: ContextKey, block_keys: list[int], slot: int, memo: BlockMemory
    ) -> None:
        """Remember ``block_keys`` (the list is kept as it is); the oldest go past the cap."""
        if not block_keys:
            return
        memory = self._memory
        memory.append((ctx_key, slot, block_keys, memo))
        self._remembered += len(block_keys)
        excess = self._remembered - self.remember
        while excess > 0:
            oldest = memory[0][2]
            if len(oldest) <= excess:
                memory.popleft()
                self._remembered -= len(oldest)
                excess -= len(oldest)
            else:
                del oldest[:excess]
                self._remembered -= excess
                excess = 0

    def remembered(self) -> int:
        """Removed or evicted keys remembered for explain (at most ``remember``)."""
        return self._remembered

    def _memory_of(self, ctx_key: ContextKey, key: int, slot: int) -> BlockMemory | None:
        """The latest thing remembered of ``key`` for ``slot`` (or every slot) in ``ctx_key``."""
        for where, whose, block_keys, memo in reversed(self._memory):
            if where == ctx_key and whose in (slot, -1) and key in block_keys:
                return memo
        return None

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

    def stats(self) -> "MemoryStats":
        """Sizes over every context."""
        contexts = self._contexts.values()
        sizes = [c.table.sizes() for c in contexts]
        return MemoryStats(
            endpoints=len(self._slot_of),
            contexts=len(self._contexts),
            keys=sum(len(c.table) for c in contexts),
            entries=sum(entries for entries, _, _, _ in sizes),
            blocks={endpoint: self.blocks_held(endpoint) for endpoint in self._slot_of},
            evictions=dict(self.evictions),
            engine_hashes=sum(mapped for _, mapped, _, _ in sizes),
            bytes_estimate=sum(c.nbytes() for c in contexts),
        )

    # -- writes -------------------------------------------------------------------------

    def apply(
        self, endpoint: EndpointId, context: EndpointContext, events: Sequence[Event], now: float
    ) -> ApplyOutcome:
        """Apply one batch's events of ``endpoint`` in order."""
        out = ApplyOutcome()
        if not now >= self._stamp_floor:  # before any context is stamped with ``now``
            self._lower_floor(now)
        slot = self._slot_of.get(endpoint)
        if slot is None:
            slot = self._slot(endpoint)
        kinds = _KINDS
        n_stored = n_removed = 0
        # Consecutive removals of one copy are applied as one run: vLLM's GPU pool sends one
        # BlockRemoved per evicted hash, the most events, so the per-event work is paid once.
        run: list[int] = []
        run_copy = PLAIN
        for event in events:
            kind = kinds.get(type(event)) or _kind(type(event))
            if kind is REMOVED:
                # ``kind`` says what the event is; an annotation costs nothing, a cast() a call
                removal: BlockRemoved = event  # type: ignore[assignment]
                n_removed += 1
                medium, group = removal.medium, removal.group_idx
                # PLAIN itself for (GPU or None, 0 or None): no tuple, and an identity test
                if (not medium or medium == GPU) and not group:
                    copy = PLAIN
                else:
                    copy = (medium or GPU, group or 0)
                if copy is not run_copy and copy != run_copy:
                    if run:
                        self._removed(slot, run, run_copy, now, out)
                        run = []
                    run_copy = copy
                hashes = removal.block_hashes
                if hashes and type(hashes[0]) is int and type(hashes[-1]) is int:
                    run += hashes  # type: ignore[arg-type]  # ints: one type per list
                else:
                    run += u64s(hashes)
                continue
            if run:
                self._removed(slot, run, run_copy, now, out)
                run = []
            if kind is STORED:
                n_stored += 1
                self._stored(slot, context, event, now, out)  # type: ignore[arg-type]
            elif kind is CLEARED:
                out.removed_blocks += self._clear(slot)
                out.cleared += 1
        if run:
            self._removed(slot, run, run_copy, now, out)
        if n_stored:
            out.events[STORED] = n_stored
        if n_removed:
            out.events[REMOVED] = n_removed
        if out.cleared:
            out.events[CLEARED] = out.cleared
        self._expire(now, out.evicted)
        return out

    def _stored(
        self, slot: int, ec: EndpointContext, event: BlockStored, now: float, out: ApplyOutcome
    ) -> None:
        n_blocks = len(event.block_hashes)
        if not n_blocks:
            return
        adapter: Adapter = event.lora_name
        if adapter is None:
            adapter = event.lora_id if event.lora_id is not None else ec.lora_id
        ctx_key = (ec.model, adapter, event.block_size)
        by_key = self._contexts
        ctx = by_key.get(ctx_key)
        parent = keys.ROOT
        parent_hash = event.parent_block_hash
        if parent_hash is not None:
            if type(parent_hash) is not int:
                parent_hash = u64(parent_hash)
            found = None if ctx is None else ctx.table.resolve(slot, parent_hash)
            if found is None:
                out.rejected[UNKNOWN_PARENT] = out.rejected.get(UNKNOWN_PARENT, 0) + 1
                out.rejected_blocks += n_blocks
                return
            parent = found
        if ctx is None:
            ctx = self._new_context(ctx_key, now, out.evicted)
        else:
            by_key.move_to_end(ctx_key)
            ctx.last_used = now
        extras = None
        extra_keys = event.extra_keys
        if extra_keys is not None and any(extra_keys):
            extras = [keys.normalise_extras(e, event.lora_name) for e in extra_keys]
        hashes = u64s(event.block_hashes)
        medium, group = event.medium, event.group_idx
        if (not medium or medium == GPU) and not group and not ctx.copies:
            # Context.store's common case without its call: the whole store in C
            out.stored_blocks += ctx.table.store(slot, parent, hashes, event.token_ids, extras)
        else:
            copy = (medium or GPU, group or 0)
            out.stored_blocks += ctx.store(
                slot, parent, hashes, event.token_ids, extras=extras, copy=copy
            )
        stored_into = self._in.get(slot)
        if stored_into is None:
            self._in[slot] = {ctx_key}
        else:
            stored_into.add(ctx_key)
        limit = self.limits.max_keys_per_context
        if len(ctx.table) > limit:
            gone: list[int] | None = [] if self.remember else None
            evicted = ctx.evict_lru(int(limit * EVICTION_LOW_WATERMARK), gone)
            self._count("max_keys", evicted, out.evicted)
            if gone:
                self._remember(ctx_key, gone, -1, BlockMemory("evicted", now, "max_keys"))

    def _removed(
        self, slot: int, engine_hashes: list[int], copy: Copy, now: float, out: ApplyOutcome
    ) -> None:
        by_key = self._contexts
        stored_into = self._in.get(slot, ())
        if len(stored_into) == 1 and copy == PLAIN:  # the common case
            (ctx_key,) = stored_into
            ctx = by_key[ctx_key]
            if not ctx.copies:
                if self.remember:
                    released: list[int] = []
                    removed, missing = ctx.table.remove_plain(slot, engine_hashes, released)
                    self._remember(ctx_key, released, slot, BlockMemory("removed", now))
                else:
                    removed, missing = ctx.table.remove_plain(slot, engine_hashes)
                out.removed_blocks += removed
                out.unknown_removed += len(missing)
                if len(missing) < len(engine_hashes):
                    by_key.move_to_end(ctx_key)
                    ctx.last_used = now
                return
        # Every context of the endpoint that maps the hash, not the first: a hybrid model whose
        # KV-cache groups have different block sizes publishes one engine hash in two contexts
        # (vLLM joins the sub-block hashes for the larger group), and only the context holding
        # the named copy may lose it. Which context comes first is set order: never let it matter.
        mine = [(k, by_key[k]) for k in stored_into]
        for engine_hash in engine_hashes:
            resolved = False
            for ctx_key, ctx in mine:
                key = ctx.resolve(slot, engine_hash)
                if key is not None:
                    resolved = True
                    released_one = ctx.remove(slot, engine_hash, key, copy)
                    out.removed_blocks += released_one
                    if released_one and self.remember:
                        self._remember(ctx_key, [key], slot, BlockMemory("removed", now))
                    by_key.move_to_end(ctx_key)
                    ctx.last_used = now
            if not resolved:
                out.unknown_removed += 1

    # -- reads --------------------------------------------------------------------------

    def match(self, query: Query, now: float) -> MatchResult:
        """Per endpoint, the leading blocks of ``query`` it holds (the design's §5)."""
        self._expire(now, {})
        adapter: Adapter = query.lora_name if query.lora_name is not None else query.lora_id
        sizes = self._sizes.get((query.model, adapter))
        if not sizes:
            bs = self.default_block_size
            return MatchResult(bs, len(query.token_ids) // bs, ())
        allowed = (1 << len(self._endpoint_at)) - 1
        if query.pods is not None:
            allowed = 0
            for pod in query.pods:
                allowed |= self._pod_mask.get(pod, 0)
        weights, other = self.medium_weights, self.other_medium_weight
        gpu_weight = weights.get(GPU, other)
        best: dict[int, Match] = {}
        for bs in sizes:
            ctx_key = (query.model, adapter, bs)
            ctx = self._contexts[ctx_key]
            self._contexts.move_to_end(ctx_key)
            ctx.last_used = now
            runs, odd = lookup.walk(ctx, query.token_ids, query.cache_salt, allowed)
            if not odd and len(sizes) == 1 and gpu_weight >= 0:  # the usual case
                ranks = self._ranks()
                matches = lookup.plain_answers(bs, runs, gpu_weight, self._endpoint_at, ranks)
                return MatchResult(bs, len(query.token_ids) // bs, matches)
            found = lookup.answers(bs, runs, odd, self._endpoint_at, weights=weights, other=other)
            if not best:  # the first block size: nothing to merge
                best = found
                continue
            for slot, match in found.items():
                old = best.get(slot)
                if old is None or (match.matched_tokens, match.score) > (
                    old.matched_tokens,
                    old.score,
                ):
                    best[slot] = match
        matches = lookup.ordered(best, self._ranks())
        bs = matches[0].block_size if matches else sizes[0]
        return MatchResult(bs, len(query.token_ids) // bs, matches)

    def explain(self, query: Query, now: float) -> Explanation:
        """``match``, plus every endpoint of the context and what stopped its run
        (``kvsync.index.explain``). Costs a lookup and the query's keys."""
        result = self.match(query, now)
        adapter: Adapter = query.lora_name if query.lora_name is not None else query.lora_id
        bs = result.block_size
        ctx_key = (query.model, adapter, bs)
        if ctx_key not in self._contexts:
            gone = [m for k, m in self._gone.items() if k[:2] == (query.model, adapter)]
            return Explanation(bs, result.query_blocks, (), gone[-1] if gone else None)
        query_keys = keys.query_keys(query.token_ids, bs, query.cache_salt)
        matched = {m.endpoint: m.matched_blocks for m in result.matches if m.block_size == bs}
        order = [m.endpoint for m in result.matches if m.endpoint in matched]
        rest = sorted(
            endpoint
            for slot, contexts in self._in.items()
            if ctx_key in contexts
            and (endpoint := self._endpoint_at[slot]) is not None
            and endpoint not in matched
            and (query.pods is None or endpoint.pod in query.pods)
        )
        runs = []
        for endpoint in [*order, *rest]:
            run = matched.get(endpoint, 0)
            memo = None
            if run < len(query_keys):
                memo = self._memory_of(ctx_key, query_keys[run], self._slot_of[endpoint])
            runs.append(EndpointRun(endpoint, run, run, memo))
        return Explanation(bs, result.query_blocks, runs)
