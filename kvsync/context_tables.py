"""The tables of one prefix-index context, and the primitives that keep them consistent. Pure.

Not thread-safe: ``ContextTables`` is the base of ``kvsync.contexts.Context`` (the writes the
index applies), owned by ``kvsync.index.PrefixIndex``, whose callers hold one lock. Raises
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
from typing import Final, Protocol, cast

import xxhash
from preshed.maps import PreshMap  # type: ignore[import-untyped]  # ships no stubs

from kvsync.model import GPU, EngineHash

Copy = tuple[str, int]  # (medium, group_idx) of one copy of a block on one endpoint
PLAIN: Final[Copy] = (GPU, 0)
HOLDERS: Final = 96  # bit offset of the holder mask in a packed value
CHILD: Final = 1 << 64  # one child in a packed value
PARENT: Final = (1 << 64) - 1  # the parent key's bits in a packed value
CHILDREN: Final = ((1 << 32) - 1) << 64  # the child count's bits in a packed value


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


class ContextTables:
    """The tables of one (model, adapter, block size); see the module docstring."""

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
        parent = value & PARENT
        up = held.get(parent)
        if up is not None and up & CHILDREN:
            held[parent] = up - CHILD
