"""One context of the prefix index: the blocks of one (model, adapter, block size). Pure.

Not thread-safe: owned by ``kvsync.index.PrefixIndex``, whose callers hold one lock. Raises
nothing: every input is a key, a slot or an engine hash the index already validated.

Layout, chosen for memory and for lookups that stay in C (dict.get on int keys):

* ``held``: key -> bit mask of endpoint slots holding *any* copy of the block. Dict order is the
  store recency (a store moves the key to the end), so the front is the least recently stored.
* ``copies``: only for keys with a copy other than (GPU, group 0): the full breakdown
  (medium, group) -> slot mask. Almost every block has just that plain copy, so this stays small.
* ``parent`` / ``children``: each present key's parent key, and how many present keys name a key
  as parent. Capacity eviction takes leaves only: a descendant of an evicted key can never
  match again, so evicting an inner key would only strand memory.
* ``engine``: per slot, engine hash -> key, to resolve a BlockStored parent and a BlockRemoved.
  An entry goes when its endpoint stops holding the block. Entries whose key was evicted by
  capacity stay ("dangling", still correct: the key is what the tokens say) until a sweep.
"""

from collections.abc import Iterable
from itertools import islice
from typing import Final

from kvsync.model import GPU, EngineHash

Copy = tuple[str, int]  # (medium, group_idx) of one copy of a block on one endpoint
PLAIN: Final[Copy] = (GPU, 0)


def slots_of(mask: int) -> Iterable[int]:
    """The slot numbers whose bit is set in ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Context:
    """The blocks of one (model, adapter, block size) and who holds them."""

    __slots__ = (
        "block_size",
        "children",
        "copies",
        "counts",
        "dangling",
        "engine",
        "held",
        "last_used",
        "parent",
    )

    def __init__(self, block_size: int, now: float) -> None:
        self.block_size = block_size
        self.held: dict[int, int] = {}
        self.copies: dict[int, dict[Copy, int]] = {}
        self.parent: dict[int, int] = {}
        self.children: dict[int, int] = {}
        self.engine: dict[int, dict[EngineHash, int]] = {}
        self.counts: dict[int, int] = {}  # slot -> keys it holds here
        self.dangling = 0  # engine entries whose key capacity eviction removed
        self.last_used = now

    def resolve(self, slot: int, engine_hash: EngineHash) -> int | None:
        """The key of ``engine_hash`` as this endpoint stored it here, if known."""
        hashes = self.engine.get(slot)
        return None if hashes is None else hashes.get(engine_hash)

    def store(
        self, slot: int, parent: int, hashes: list[EngineHash], keys: list[int], copy: Copy
    ) -> int:
        """Record that ``slot`` holds ``copy`` of each block; returns blocks newly held."""
        bit = 1 << slot
        held, copies, engine = self.held, self.copies, self.engine.setdefault(slot, {})
        new = 0
        # Deepest block first, so that inside one chain an ancestor is always more recent than
        # its descendants and LRU eviction meets the leaves first.
        for i in range(len(keys) - 1, -1, -1):
            key, engine_hash = keys[i], hashes[i]
            previous = engine.get(engine_hash)
            if previous != key:
                if previous is not None:  # the engine reused a hash for other tokens
                    self._forget(slot, previous)
                engine[engine_hash] = key
            mask = held.pop(key, 0)
            held[key] = mask | bit
            if not mask:
                up = keys[i - 1] if i else parent
                self.parent[key] = up
                self.children[up] = self.children.get(up, 0) + 1
            if copy != PLAIN or key in copies:
                detail = copies.get(key)
                if detail is None:
                    detail = copies[key] = {PLAIN: mask} if mask else {}
                detail[copy] = detail.get(copy, 0) | bit
            if not mask & bit:
                new += 1
        if new:
            self.counts[slot] = self.counts.get(slot, 0) + new
        return new

    def remove(self, slot: int, engine_hash: EngineHash, key: int, copy: Copy) -> bool:
        """Drop ``slot``'s ``copy`` of a block; True when the slot no longer holds it at all."""
        bit = 1 << slot
        mask = self.held.get(key, 0)
        if not mask & bit:
            self._unmap(slot, engine_hash)  # a dangling entry: the key was evicted
            return False
        detail = self.copies.get(key)
        if detail is None:
            if copy != PLAIN:
                return False
            mask ^= bit
        else:
            copy_mask = detail.get(copy, 0)
            if not copy_mask & bit:
                return False
            if copy_mask == bit:
                del detail[copy]
            else:
                detail[copy] = copy_mask ^ bit
            if not any(m & bit for m in detail.values()):
                mask ^= bit
            if not detail or (len(detail) == 1 and PLAIN in detail):
                del self.copies[key]  # back to the plain layout: held == the plain mask
        if mask & bit:
            return False
        self._unmap(slot, engine_hash)
        self.counts[slot] -= 1
        if mask:
            self.held[key] = mask
        else:
            self._delete(key)
        return True

    def clear_slot(self, slot: int) -> int:
        """Drop every copy ``slot`` holds here; returns how many blocks it held."""
        hashes = self.engine.pop(slot, {})
        held = self.counts.pop(slot, 0)
        bit = 1 << slot
        for key in set(hashes.values()):
            self._strip(key, bit)
        self.dangling = max(0, self.dangling - len(hashes))
        return held

    def evict_lru(self, target: int) -> int:
        """Evict least recently stored leaf keys until at most ``target`` remain; returns how
        many. An inner key met on the way moves to the recent end: its subtree was used at
        least as recently as itself (its descendants arrived through a later parent link)."""
        held, children = self.held, self.children
        evicted = spared = 0
        while len(held) > target:
            for key in list(islice(held, len(held) - target)):
                # spared > len(held): every key was an ancestor, which only a 64-bit key
                # collision (a cycle) can cause; evict anyway rather than spin
                if children.get(key) and spared <= len(held):
                    held[key] = held.pop(key)
                    spared += 1
                else:
                    self._evict(key)
                    evicted += 1
                    spared = 0
        if self.dangling > len(held):
            self._sweep()
        return evicted

    def entries(self) -> int:
        """(block, endpoint) pairs held here."""
        return sum(self.counts.values())

    def _evict(self, key: int) -> None:
        for slot in slots_of(self.held[key]):
            self.counts[slot] -= 1
            self.dangling += 1
        self._delete(key)

    def _forget(self, slot: int, key: int) -> None:
        """The slot stops holding ``key`` in every medium and group."""
        if self.held.get(key, 0) & (1 << slot):
            self.counts[slot] -= 1
            self._strip(key, 1 << slot)

    def _strip(self, key: int, bit: int) -> None:
        mask = self.held.get(key, 0)
        if not mask & bit:
            return
        detail = self.copies.get(key)
        if detail is not None:
            for copy in [c for c, m in detail.items() if m & bit]:
                if detail[copy] == bit:
                    del detail[copy]
                else:
                    detail[copy] ^= bit
            if not detail or (len(detail) == 1 and PLAIN in detail):
                del self.copies[key]
        if mask == bit:
            self._delete(key)
        else:
            self.held[key] = mask ^ bit

    def _unmap(self, slot: int, engine_hash: EngineHash) -> None:
        hashes = self.engine.get(slot)
        if hashes is not None:
            hashes.pop(engine_hash, None)

    def _delete(self, key: int) -> None:
        del self.held[key]
        self.copies.pop(key, None)
        parent = self.parent.pop(key)
        left = self.children[parent] - 1
        if left:
            self.children[parent] = left
        else:
            del self.children[parent]

    def _sweep(self) -> None:
        """Drop engine entries whose key was evicted (amortised: runs when they outnumber keys)."""
        held = self.held
        for slot, hashes in self.engine.items():
            self.engine[slot] = {h: k for h, k in hashes.items() if held.get(k, 0) >> slot & 1}
        self.dangling = 0
