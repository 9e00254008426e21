"""A writer's own state of the endpoints it owns, and the changes Redis has not seen yet. Pure.

Each endpoint has one writer at a time (its shard's replica; a claim fences any other), so the
writer keeps the endpoint's blocks in process: engine hash → key to resolve parents and
removals, key → (engine hash, copy mask) for the values it writes. ``apply`` answers from this
state at once — the outcome the sequencer needs (blocks stored, removed, held, rejected) — and
records what changed as final values per block (``Pending``), merged until the writer flushes
them. So the ingest thread never waits for Redis, a block stored and removed between two
flushes costs Redis nothing, and while Redis is unreachable the pending changes stay bounded by
the blocks the endpoint holds.

Semantics are the memory backend's (``kvsync.index.memory.index``), per endpoint: contexts
(model, adapter, block size), chained keys, parents resolved through the endpoint's engine
hashes (an unknown parent is rejected, never rooted), copies per (medium, group), removals of
exactly the named copies in every context that maps the hash, AllBlocksCleared per endpoint.
Two limits differ, since no writer sees the whole index: ``max_keys_per_context`` bounds each
(endpoint, context), evicting the blocks stored first; contexts are not expired by idleness
(lookups, which refresh a context in memory, do not pass through the writer).
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from kvsync.index import keys
from kvsync.index.keys import u64, u64s
from kvsync.index.redis.layout import ENGINE_MASK, Adapter, ContextKey, context_tag
from kvsync.index.values import (
    EVICTION_LOW_WATERMARK,
    UNKNOWN_PARENT,
    ApplyOutcome,
    EndpointContext,
    Limits,
)
from kvsync.model import GPU, AllBlocksCleared, BlockRemoved, BlockStored, Event

CopyBit = Callable[[str, int], int]  # (medium, group) -> its bit (allocated on first use)


@dataclass(slots=True)
class ShadowContext:
    """One context of one endpoint: its blocks in store order."""

    key: ContextKey
    tag: str
    held: dict[int, int] = field(default_factory=dict)  # key -> packed value (``layout``)
    engine: dict[int, int] = field(default_factory=dict)  # engine hash -> key


@dataclass(slots=True)
class Pending:
    """Changes since the last flush: per context tag, dropped first (``clear``) and then the final
    value of each block written (None: deleted); registry entries to add (True) or remove."""

    clear: set[str] = field(default_factory=set)
    writes: dict[str, dict[int, int | None]] = field(default_factory=dict)
    registry: dict[str, bool] = field(default_factory=dict)
    rewrite: bool = False  # the whole state: skip the stored-seq check

    def under(self, newer: "Pending") -> "Pending":
        """These changes followed by ``newer`` (a flush that failed goes back under the next)."""
        merged = Pending(set(self.clear), {}, dict(self.registry), self.rewrite or newer.rewrite)
        for tag, writes in self.writes.items():
            if tag not in newer.clear:
                merged.writes[tag] = dict(writes)
        for tag in newer.clear:
            merged.clear.add(tag)
        for tag, writes in newer.writes.items():
            merged.writes.setdefault(tag, {}).update(writes)
        merged.registry.update(newer.registry)
        return merged


class EndpointShadow:
    """One owned endpoint: its contexts, the seq applied, the changes not yet flushed."""

    def __init__(self, limits: Limits, copy_bit: CopyBit) -> None:
        self.contexts: dict[ContextKey, ShadowContext] = {}
        self.seq: int | None = None  # the last seq applied here
        self.pending = Pending()
        self._limits = limits
        self._copy_bit = copy_bit

    # -- reads ------------------------------------------------------------------------------

    def blocks_held(self) -> int:
        return sum(len(ctx.held) for ctx in self.contexts.values())

    def context_tags(self) -> str:
        return " ".join(ctx.tag for ctx in self.contexts.values())

    def take_pending(self) -> Pending:
        pending, self.pending = self.pending, Pending()
        return pending

    def everything(self) -> Pending:
        """The whole state as one rewrite (after a failover lost writes already made)."""
        pending = Pending(rewrite=True)
        for ctx in self.contexts.values():
            pending.clear.add(ctx.tag)
            pending.writes[ctx.tag] = dict(ctx.held)
            pending.registry[ctx.tag] = True
        return pending

    # -- writes -----------------------------------------------------------------------------

    def load(self, context: ContextKey, items: Iterator[tuple[int, int]]) -> None:
        """Restore one context from Redis: (key, packed value) pairs."""
        ctx = self._context(context, register=False)
        for key, value in items:
            ctx.held[key] = value
            ctx.engine[value & ENGINE_MASK] = key

    def apply(self, ec: EndpointContext, events: Sequence[Event], out: ApplyOutcome) -> None:
        """Apply one batch's events in order, filling ``out`` (``blocks_held`` included)."""
        n_stored = n_removed = 0
        for event in events:
            if isinstance(event, BlockRemoved):
                n_removed += 1
                self._removed(event, out)
            elif isinstance(event, BlockStored):
                n_stored += 1
                self._stored(ec, event, out)
            elif isinstance(event, AllBlocksCleared):
                out.removed_blocks += self.clear()
                out.cleared += 1
        if n_stored:
            out.events["BlockStored"] = n_stored
        if n_removed:
            out.events["BlockRemoved"] = n_removed
        if out.cleared:
            out.events["AllBlocksCleared"] = out.cleared
        out.blocks_held = self.blocks_held()

    def clear(self) -> int:
        """Drop every block in every context; returns how many were held."""
        held = self.blocks_held()
        pending = self.pending
        for ctx in self.contexts.values():
            pending.clear.add(ctx.tag)
            pending.writes.pop(ctx.tag, None)
            pending.registry[ctx.tag] = False
        self.contexts = {}
        return held

    def _context(self, context: ContextKey, *, register: bool = True) -> ShadowContext:
        ctx = self.contexts.get(context)
        if ctx is None:
            ctx = self.contexts[context] = ShadowContext(context, context_tag(context))
            if register:
                self.pending.registry[ctx.tag] = True
        return ctx

    def _write(self, ctx: ShadowContext, key: int, value: int | None) -> None:
        writes = self.pending.writes.get(ctx.tag)
        if writes is None:
            writes = self.pending.writes[ctx.tag] = {}
        writes[key] = value

    def _stored(self, ec: EndpointContext, event: BlockStored, out: ApplyOutcome) -> None:
        n_blocks = len(event.block_hashes)
        if not n_blocks:
            return
        adapter: Adapter = event.lora_name
        if adapter is None:
            adapter = event.lora_id if event.lora_id is not None else ec.lora_id
        context: ContextKey = (ec.model, adapter, event.block_size)
        ctx = self.contexts.get(context)
        parent = keys.ROOT
        if event.parent_block_hash is not None:
            found = None if ctx is None else ctx.engine.get(u64(event.parent_block_hash))
            if found is None:
                out.rejected[UNKNOWN_PARENT] = out.rejected.get(UNKNOWN_PARENT, 0) + 1
                out.rejected_blocks += n_blocks
                return
            parent = found
        if ctx is None:
            ctx = self._context(context)
        extras = None
        if event.extra_keys is not None and any(event.extra_keys):
            extras = [keys.normalise_extras(e, event.lora_name) for e in event.extra_keys]
        chain = keys.chain(parent, event.token_ids, event.block_size, extras)
        bit = 1 << self._copy_bit(event.medium or GPU, event.group_idx or 0)
        held, engine = ctx.held, ctx.engine
        for engine_hash, key in zip(u64s(event.block_hashes), chain, strict=True):
            previous = engine.get(engine_hash)
            engine[engine_hash] = key
            if previous is not None and previous != key and held.pop(previous, None) is not None:
                self._write(ctx, previous, None)  # the engine reused a hash for other tokens
            old = held.get(key)
            if old is None:
                out.stored_blocks += 1
                value = engine_hash | bit << 64
            else:
                value = engine_hash | (old >> 64 | bit) << 64
                if value == old:
                    continue
            held[key] = value
            self._write(ctx, key, value)
        limit = self._limits.max_keys_per_context
        if len(held) > limit:
            self._evict(ctx, len(held) - int(limit * EVICTION_LOW_WATERMARK), out)

    def _evict(self, ctx: ShadowContext, count: int, out: ApplyOutcome) -> None:
        for key in list(islice(ctx.held, count)):
            engine_hash = ctx.held.pop(key) & ENGINE_MASK
            if ctx.engine.get(engine_hash) == key:
                del ctx.engine[engine_hash]
            self._write(ctx, key, None)
        out.evicted["max_keys"] = out.evicted.get("max_keys", 0) + count

    def _removed(self, event: BlockRemoved, out: ApplyOutcome) -> None:
        bit = 1 << self._copy_bit(event.medium or GPU, event.group_idx or 0)
        contexts = list(self.contexts.values())
        for engine_hash in u64s(event.block_hashes):
            resolved = False
            for ctx in contexts:
                key = ctx.engine.get(engine_hash)
                if key is None:
                    continue
                resolved = True
                value = ctx.held.get(key)
                if value is None:  # stored under this hash, then evicted: a dangling entry
                    del ctx.engine[engine_hash]
                    continue
                mask = value >> 64
                if not mask & bit:
                    continue
                mask ^= bit
                if mask:
                    value = (value & ENGINE_MASK) | mask << 64
                    ctx.held[key] = value
                    self._write(ctx, key, value)
                else:
                    del ctx.held[key]
                    del ctx.engine[engine_hash]
                    out.removed_blocks += 1
                    self._write(ctx, key, None)
            if not resolved:
                out.unknown_removed += 1
        for ctx in contexts:
            if not ctx.held and not ctx.engine:
                del self.contexts[ctx.key]
                self.pending.registry[ctx.tag] = False
