"""One context of the prefix index: the blocks of one (model, adapter, block size). Pure.

Not thread-safe: owned by ``kvsync.index.PrefixIndex``, whose callers hold one lock. Raises
nothing: every input is a key, a slot or an engine hash the index already validated.

Layout, chosen on measurements (BENCHMARKS.md, ``## Index``): on a big dict every access is a
cache miss, so each block costs as few dict operations as possible, and each key is one dict
entry whose value packs everything the key needs into one int:

    held[key] = holders << 96 | children << 64 | parent

* ``holders``: bit mask of the endpoint slots holding *any* copy of the block (unbounded: a
  fleet may have more than 64 endpoints). Lookups AND it with the still-matching endpoints
  shifted left by 96, so the low bits never need masking on the hot path.
* ``children``: how many present keys name this key as their parent (32 bits). Capacity
  eviction takes leaves only: a descendant of an evicted key can never match again, so evicting
  an inner key would strand memory. A child stored while its parent was absent is not counted
  (the parent, stored later, may then be evicted first; its children are leaves and follow).
* ``parent``: the parent key (ROOT for a chain start), to decrement that count on deletion.

Dict order is the store recency (a store moves its keys to the end, deepest block first, so
within a chain an ancestor is always more recent than its descendants).

``copies`` exists only for keys with a copy other than (GPU, group 0): the full breakdown
(medium, group) -> slot mask. ``engine`` is, per slot, engine hash -> key (a ``U64Map``: no
Python object per entry), to resolve a BlockStored parent and a BlockRemoved; an entry goes
when its endpoint stops holding the block, and entries whose key capacity eviction removed
("dangling", still correct: the key is what the tokens say) go in an amortised sweep.
"""

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Final, Protocol, cast

import xxhash
from preshed.maps import PreshMap  # type: ignore[import-untyped]  # ships no stubs

from kvsync.model import GPU, EngineHash

Copy = tuple[str, int]  # (medium, group_idx) of one copy of a block on one endpoint
PLAIN: Final[Copy] = (GPU, 0)
HOLDERS: Final = 96  # bit offset of the holder mask in a packed value
CHILD: Final = 1 << 64  # one child in a packed value
_PARENT: Final = (1 << 64) - 1
_CHILDREN: Final = ((1 << 32) - 1) << 64


class U64Map(Protocol):
    """``preshed.maps.PreshMap``: uint64 -> uint64 in a C hash table (16 bytes a cell, no
    Python object per entry: half the memory of a dict of ints). Missing keys read as None."""

    def __getitem__(self, key: int) -> int | None: ...
    def __setitem__(self, key: int, value: int) -> None: ...
    def __len__(self) -> int: ...
    def pop(self, key: int) -> int | None: ...
    def items(self) -> Iterator[tuple[int, int]]: ...
    def values(self) -> Iterator[int]: ...


def u64(engine_hash: EngineHash) -> int:
    """Engine hashes as uint64 map keys: 32-byte hashes (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``)
    are hashed down to 64 bits; a collision inside one endpoint's cache is ~2^-64 likely."""
    if isinstance(engine_hash, int):
        return engine_hash
    return xxhash.xxh3_64_intdigest(engine_hash)


def u64s(engine_hashes: list[EngineHash]) -> list[int]:
    """``u64`` of each; a decoded list holds one type (a mixed list fails decoding)."""
    if engine_hashes and type(engine_hashes[0]) is int and type(engine_hashes[-1]) is int:
        return engine_hashes  # type: ignore[return-value]  # ints: one type per list
    return [u64(h) for h in engine_hashes]


def u64_map() -> U64Map:
    """A new, empty engine-hash map."""
    return cast(U64Map, PreshMap())


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
        "copies",
        "counts",
        "dangling",
        "engine",
        "engine_live",
        "held",
        "last_used",
    )

    def __init__(self, block_size: int, now: float) -> None:
        self.block_size = block_size
        self.held: dict[int, int] = {}
        self.copies: dict[int, dict[Copy, int]] = {}
        self.engine: dict[int, U64Map] = {}  # slot -> engine hash (as uint64) -> key
        # Live entries per slot map. A PreshMap counts deleted cells as filled and doubles on
        # every resize, so under churn it would grow for ever: it is rebuilt once it holds
        # twice as many cells as live entries (amortised O(1) per removal).
        self.engine_live: dict[int, int] = {}
        self.counts: dict[int, int] = {}  # slot -> keys it holds here
        self.dangling = 0  # engine entries whose key capacity eviction removed
        self.last_used = now

    def resolve(self, slot: int, engine_hash: int) -> int | None:
        """The key of ``engine_hash`` as this endpoint stored it here, if known."""
        hashes = self.engine.get(slot)
        return None if hashes is None else hashes[engine_hash]

    def holders(self, key: int) -> int:
        """Slot mask of the endpoints holding ``key`` in any copy."""
        return self.held.get(key, 0) >> HOLDERS

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
        for i in range(last, -1, -1):  # deepest first: see the module docstring
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
            parent = value & _PARENT
            up = held.get(parent)
            if up is not None and up & _CHILDREN:
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
                if value & _CHILDREN and spared <= len(held):
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

    def entries(self) -> int:
        """(block, endpoint) pairs held here."""
        return sum(self.counts.values())

    def _forget(self, slot: int, key: int) -> None:
        """The slot stops holding ``key`` in every medium and group."""
        if self.held.get(key, 0) >> HOLDERS & (1 << slot):
            self.counts[slot] -= 1
            self._strip(key, slot)

    def _strip(self, key: int, slot: int) -> None:
        value = self.held.get(key, 0)
        packed_bit = 1 << (slot + HOLDERS)
        if not value & packed_bit:
            return
        detail = self.copies.get(key)
        if detail is not None:
            bit = 1 << slot
            for copy in [c for c, m in detail.items() if m & bit]:
                if detail[copy] == bit:
                    del detail[copy]
                else:
                    detail[copy] ^= bit
            if not detail or (len(detail) == 1 and PLAIN in detail):
                del self.copies[key]
        self._drop_holder(key, value, packed_bit)

    def _drop_holder(self, key: int, value: int, packed_bit: int) -> None:
        value ^= packed_bit
        if value >> HOLDERS:
            self.held[key] = value
        else:
            self._delete(key, value)

    def _unmap(self, slot: int, engine_hash: int) -> None:
        hashes = self.engine.get(slot)
        if hashes is not None and hashes.pop(engine_hash) is not None:
            self._unmapped(slot, 1)

    def _unmapped(self, slot: int, n: int) -> None:
        """``n`` entries left the slot's map: rebuild it once deleted cells dominate."""
        live = self.engine_live[slot] - n
        self.engine_live[slot] = live
        hashes = self.engine[slot]
        if len(hashes) > 2 * live + 64:  # len() counts deleted cells too
            compact = u64_map()
            for engine_hash, key in hashes.items():
                compact[engine_hash] = key
            self.engine[slot] = compact

    def _delete(self, key: int, value: int) -> None:
        held = self.held
        del held[key]
        if self.copies:
            self.copies.pop(key, None)
        parent = value & _PARENT
        up = held.get(parent)
        if up is not None and up & _CHILDREN:
            held[parent] = up - CHILD

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
