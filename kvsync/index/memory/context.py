"""One context of the prefix index: the writes it takes (store, remove, clear, evict). Pure.

Not thread-safe: owned by ``kvsync.index.memory.index.PrefixIndex``, whose callers hold one lock.
Raises nothing for keys, slots and engine hashes the index validated (``ValueError`` from the token
conversion for token ids outside [0, 2^32), which the decoder rejects first).

Layout, chosen on measurements (BENCHMARKS.md, ``## Index``): the bulk lives in C
(``kvsync._native.KeyTable``, sources in ``kvsync/csrc/``), one flat table per context:

* per key: its parent key, how many present keys name it as their parent, its place in the
  store recency order and a bit mask of the endpoint slots holding *any* copy of the block;
* per slot: engine hash -> key (to resolve a BlockStored parent and a BlockRemoved) and how
  many keys it holds.

Capacity eviction takes the least recently stored *leaves* only: a descendant of an evicted key
can never match again, so evicting an inner key would strand memory. Within a chain an ancestor
is always more recent than its descendants (a store moves its keys to the recent end, deepest
first). A child stored while its parent was absent is not counted (the parent, stored later, may
then be evicted first; its children are leaves and follow). Engine entries whose key capacity
eviction removed ("dangling", still correct: the key is what the tokens say) are swept once they
outnumber the keys.

``copies`` stays in Python: it exists only for keys with a copy other than (GPU, group 0) — the
full breakdown (medium, group) -> slot mask — which vLLM's GPU-only pools never send. A context
without any takes the C paths whole; one with some pays per-key Python work. ``copied`` indexes
the breakdowns by slot (every slot with a bit in one), so clearing an endpoint costs what that
endpoint holds, and eviction cleans exactly the keys it evicted: neither walks every breakdown
of the context (at 400k keys that walk held the index lock for 0.34 s, for any endpoint).
"""

from collections.abc import Iterable, Sequence
from typing import Final

import msgspec

from kvsync import _native
from kvsync.index import keys
from kvsync.model import GPU

Copy = tuple[str, int]  # (medium, group_idx) of one copy of a block on one endpoint
PLAIN: Final[Copy] = (GPU, 0)
_BYTES_PER_COPY: Final = 400  # a breakdown dict with its tuples and ints; an estimate only


def slots_of(mask: int) -> Iterable[int]:
    """The slot numbers whose bit is set in ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Context:
    """The blocks of one (model, adapter, block size) and who holds them."""

    __slots__ = ("block_size", "copied", "copies", "last_used", "table")

    def __init__(self, block_size: int, now: float) -> None:
        self.block_size = block_size
        self.table = _native.KeyTable(block_size)
        self.copies: dict[int, dict[Copy, int]] = {}
        self.copied: dict[int, set[int]] = {}  # slot -> keys of ``copies`` with its bit
        self.last_used = now

    def resolve(self, slot: int, engine_hash: int) -> int | None:
        """The key of ``engine_hash`` as this endpoint stored it here, if known."""
        return self.table.resolve(slot, engine_hash)

    def holders(self, key: int) -> int:
        """Slot mask of the endpoints holding ``key`` in any copy."""
        return self.table.holders(key)

    def is_empty(self) -> bool:
        """No key held and no engine hash mapped."""
        return not len(self.table) and not self.table.sizes()[1]

    def store(
        self,
        slot: int,
        parent: int,
        hashes: list[int],
        token_ids: Sequence[int] | msgspec.Raw,
        *,
        extras: list[bytes | None] | None,
        copy: Copy,
    ) -> int:
        """Record that ``slot`` holds ``copy`` of each block of the chain ``token_ids`` (ints or
        a msgpack array) continues after ``parent``; returns blocks newly held."""
        if copy == PLAIN and not self.copies:  # the common case: all in C
            return self.table.store(slot, parent, hashes, token_ids, extras)
        chain = keys.chain(parent, token_ids, self.block_size, extras)
        return self.store_keys(slot, parent, hashes, chain, copy)

    def store_keys(
        self, slot: int, parent: int, hashes: list[int], chain: list[int], copy: Copy
    ) -> int:
        """``store`` with the chain's keys computed; keeps ``copies`` right."""
        table, copies = self.table, self.copies
        bit = 1 << slot
        for engine_hash, key in zip(hashes, chain, strict=True):
            previous = table.resolve(slot, engine_hash)
            if previous is not None and previous != key and previous in copies:
                self._strip(previous, slot)  # the engine reused a hash for other tokens
        plain = copy == PLAIN
        before = [table.holders(key) for key in chain]
        new = table.store_keys(slot, parent, hashes, chain)
        mine = None
        for key, mask in zip(chain, before, strict=True):
            if not plain or key in copies:
                detail = copies.get(key)
                if detail is None:
                    detail = copies[key] = {PLAIN: mask} if mask else {}
                    self._index(key, mask)  # the other holders' plain copies are in it now
                detail[copy] = detail.get(copy, 0) | bit
                if mine is None:
                    mine = self.copied.setdefault(slot, set())
                mine.add(key)
        return new

    def remove(self, slot: int, engine_hash: int, key: int, copy: Copy) -> bool:
        """Drop ``slot``'s ``copy`` of a block; True when the slot no longer holds it at all."""
        table = self.table
        bit = 1 << slot
        if not table.holders(key) & bit:
            table.unmap(slot, engine_hash)  # a dangling entry: the key was evicted
            return False
        detail = self.copies.get(key)
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
                self._unindex(key, bit | _union(detail))
            elif not still:
                self._unindex(key, bit)
            if still:
                return False
        table.unmap(slot, engine_hash)
        return table.release(slot, key)

    def remove_plain(self, slot: int, engine_hashes: list[int]) -> tuple[int, list[int]]:
        """``remove`` of the plain copy of each block ``slot`` maps here, for a context where no
        block has a breakdown (``copies`` empty); returns (blocks the slot no longer holds, the
        hashes it does not map here). vLLM's GPU pool sends one BlockRemoved per evicted hash:
        the most common write, done in one C call."""
        return self.table.remove_plain(slot, engine_hashes)

    def clear_slot(self, slot: int) -> int:
        """Drop every copy ``slot`` holds here; returns how many blocks it held."""
        held = self.table.clear_slot(slot)
        for key in self.copied.pop(slot, ()):
            self._strip(key, slot)
        return held

    def evict_lru(self, target: int, evicted_keys: list[int] | None = None) -> int:
        """Evict least recently stored leaf keys until at most ``target`` remain; returns how
        many (an inner key met on the way moves to the recent end: its subtree was used at
        least as recently as itself). With ``evicted_keys``, the keys go there too."""
        if not self.copies and evicted_keys is None:
            return self.table.evict(target)
        evicted = self.table.evict_keys(target)
        if evicted_keys is not None:
            evicted_keys.extend(evicted)
        for key in evicted:
            detail = self.copies.pop(key, None)
            if detail is not None:
                self._unindex(key, _union(detail))
        return len(evicted)

    def entries(self) -> int:
        """(block, endpoint) pairs held here."""
        return self.table.sizes()[0]

    def nbytes(self) -> int:
        """Memory held by this context's tables (the C tables exactly, breakdowns estimated)."""
        return self.table.sizes()[2] + len(self.copies) * _BYTES_PER_COPY

    def _strip(self, key: int, slot: int) -> None:
        """Drop ``slot``'s bit from ``key``'s breakdown; the breakdown goes when only the plain
        copy is left, or when the key itself is gone."""
        bit = 1 << slot
        detail = self.copies[key]
        for copy in [c for c, m in detail.items() if m & bit]:
            if detail[copy] == bit:
                del detail[copy]
            else:
                detail[copy] ^= bit
        if not detail or (len(detail) == 1 and PLAIN in detail) or key not in self.table:
            del self.copies[key]
            self._unindex(key, bit | _union(detail))
        else:
            self._unindex(key, bit)

    def _index(self, key: int, mask: int) -> None:
        copied = self.copied
        for slot in slots_of(mask):
            copied.setdefault(slot, set()).add(key)

    def _unindex(self, key: int, mask: int) -> None:
        copied = self.copied
        for slot in slots_of(mask):
            keys = copied.get(slot)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del copied[slot]


def _union(detail: dict[Copy, int]) -> int:
    """Every slot with a bit in a breakdown."""
    mask = 0
    for m in detail.values():
        mask |= m
    return mask
