"""One context of the prefix index: the writes it takes (store, remove, clear, evict). Pure.

Not thread-safe: owned by ``kvsync.index.PrefixIndex``, whose callers hold one lock. Raises
nothing: every input is a key, a slot or an engine hash the index already validated.

``Context`` applies one endpoint slot's stores and removals to the tables it inherits from
``kvsync.context_tables.ContextTables`` (the packed per-key layout, the engine-hash maps and
the primitives that keep them consistent are described there), and evicts the least recently
stored leaf keys when the context is over capacity.
"""

from itertools import islice

from kvsync.context_tables import (
    CHILD,
    CHILDREN,
    HOLDERS,
    PARENT,
    PLAIN,
    ContextTables,
    Copy,
    slots_of,
    u64_map,
)


class Context(ContextTables):
    """The blocks of one (model, adapter, block size) and who holds them."""

    __slots__ = ()

    def store(self, slot: int, parent: int, hashes: list[int], keys: list[int], copy: Copy) -> int:
        """Record that ``slot`` holds ``copy`` of each block; returns blocks newly held."""
        bit = 1 << slot
        packed_bit = bit << HOLDERS
        held, copies = self.held, self.copies
        engine = self.engine.get(slot)
        if engine is None:
            engine = self.engine[slot] = u64_map()
        plain = copy == PLAIN
        new = mapped = 0
        last = len(keys) - 1
        child_new = False  # whether the block after this one is a new key
        for i in range(last, -1, -1):  # deepest first: see kvsync.context_tables
            key = keys[i]
            engine_hash = hashes[i]
            previous = engine[engine_hash]
            if previous != key:
                if previous is None:
                    mapped += 1
                else:  # the engine reused a hash for other tokens
                    self._forget(slot, previous)
                engine[engine_hash] = key
            # a new key's next block in this event is its child; setdefault inserts it at once
            fresh = packed_bit | (CHILD if i < last else 0) | (keys[i - 1] if i else parent)
            value = held.setdefault(key, fresh)
            if value is fresh:
                new += 1
                mask = 0
            else:  # move to the recent end
                del held[key]
                held[key] = (value | packed_bit) + (CHILD if child_new else 0)
                mask = value >> HOLDERS
                if not mask & bit:
                    new += 1
            child_new = value is fresh
            if not plain or (copies and key in copies):
                detail = copies.get(key)
                if detail is None:
                    detail = copies[key] = {PLAIN: mask} if mask else {}
                detail[copy] = detail.get(copy, 0) | bit
        if child_new and parent in held:
            held[parent] += CHILD
        if new:
            self.counts[slot] = self.counts.get(slot, 0) + new
        if mapped:
            self.engine_live[slot] = self.engine_live.get(slot, 0) + mapped
        return new

    def remove(self, slot: int, engine_hash: int, key: int, copy: Copy) -> bool:
        """Drop ``slot``'s ``copy`` of a block; True when the slot no longer holds it at all."""
        bit = 1 << slot
        packed_bit = bit << HOLDERS
        held = self.held
        value = held.get(key, 0)
        if not value & packed_bit:
            self._unmap(slot, engine_hash)  # a dangling entry: the key was evicted
            return False
        detail = self.copies.get(key) if self.copies else None
        if detail is None:
            if copy != PLAIN:
                return False
        else:
            copy_mask = detail.get(copy, 0)
            if not copy_mask & bit:
                return False
            if copy_mask == bit:
                del detail[copy]
            else:
                detail[copy] = copy_mask ^ bit
            still = any(m & bit for m in detail.values())
            if not detail or (len(detail) == 1 and PLAIN in detail):
                del self.copies[key]  # back to the plain layout: holders == the plain mask
            if still:
                return False
        self._unmap(slot, engine_hash)
        self.counts[slot] -= 1
        value ^= packed_bit
        if value >> HOLDERS:
            held[key] = value
        else:
            self._delete(key, value)
        return True

    def remove_plain(self, slot: int, engine_hashes: list[int]) -> tuple[int, list[int]]:
        """``remove`` of the plain copy of each block ``slot`` maps here, in order, for a context
        where no block has a breakdown (``copies`` empty); returns (blocks the slot no longer
        holds, the hashes it does not map here). The common removal (vLLM's GPU pool, one
        BlockRemoved per evicted hash) inlined: no call per hash."""
        engine = self.engine.get(slot)
        if engine is None:
            return 0, engine_hashes
        held = self.held
        packed_bit = 1 << (slot + HOLDERS)
        removed = unmapped = 0
        missing: list[int] = []
        for engine_hash in engine_hashes:
            key = engine.pop(engine_hash)
            if key is None:
                missing.append(engine_hash)
                continue
            unmapped += 1  # dangling (capacity-evicted key) or held: the mapping goes either way
            value = held.get(key, 0)
            if not value & packed_bit:
                continue
            removed += 1
            value ^= packed_bit
            if value >> HOLDERS:
                held[key] = value
                continue
            del held[key]  # _delete without copies, inlined
            parent = value & PARENT
            up = held.get(parent)
            if up is not None and up & CHILDREN:
                held[parent] = up - CHILD
        if removed:
            self.counts[slot] -= removed
        if unmapped:
            self._unmapped(slot, unmapped)
        return removed, missing

    def clear_slot(self, slot: int) -> int:
        """Drop every copy ``slot`` holds here; returns how many blocks it held."""
        hashes = self.engine.pop(slot, None)
        self.engine_live.pop(slot, None)
        held = self.counts.pop(slot, 0)
        if hashes is None:
            return held
        for key in set(hashes.values()):
            self._strip(key, slot)
        self.dangling = max(0, self.dangling - len(hashes))
        return held

    def evict_lru(self, target: int) -> int:
        """Evict least recently stored leaf keys until at most ``target`` remain; returns how
        many. An inner key met on the way moves to the recent end: its subtree was used at
        least as recently as itself (its descendants arrived through a later parent link)."""
        held = self.held
        evicted = spared = 0
        while len(held) > target:
            for key in list(islice(held, len(held) - target)):
                value = held[key]
                # spared > len(held): every key was an ancestor, which only a 64-bit key
                # collision (a cycle) can cause; evict anyway rather than spin
                if value & CHILDREN and spared <= len(held):
                    held[key] = held.pop(key)
                    spared += 1
                    continue
                for slot in slots_of(value >> HOLDERS):
                    self.counts[slot] -= 1
                    self.dangling += 1
                self._delete(key, value)
                evicted += 1
                spared = 0
        if self.dangling > len(held):
            self._sweep()
        return evicted

    def _sweep(self) -> None:
        """Drop engine entries whose key was evicted (amortised: runs when they outnumber keys)."""
        held = self.held
        for slot, hashes in self.engine.items():
            packed_bit = 1 << (slot + HOLDERS)
            kept = u64_map()
            live = 0
            for engine_hash, key in hashes.items():
                if held.get(key, 0) & packed_bit:
                    kept[engine_hash] = key
                    live += 1
            self.engine[slot] = kept
            self.engine_live[slot] = live
        self.dangling = 0
