"""kvsync._native.KeyTable against a plain Python model, including what the index tests rarely
reach: slots past 64 (the holder mask widens under existing records), capacity eviction with
many holders, free-list reuse after deletions, table growth, and engine hashes reused for other
tokens. Observables: holders, per-slot counts, sizes, resolve and the walk."""

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvsync import _native
from kvsync.index import keys

BS = 2
SLOTS = [0, 1, 5, 63, 64, 65, 130]
PATHS = 4  # token paths; blocks of one path chain, paths share their first block's tokens
DEPTH = 12


def path_tokens(path: int) -> list[int]:
    # paths 0 and 1 share their first block (a "system prompt"), then diverge
    first = [7, 7] if path < 2 else [path, path]
    return first + [path * 1000 + i for i in range(2 * (DEPTH - 1))]


PATH_KEYS = [keys.chain(keys.ROOT, path_tokens(p), BS) for p in range(PATHS)]


class KeyTableModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = _native.KeyTable(BS)
        self.holders: dict[int, set[int]] = {}  # key -> slots holding it
        self.maps: dict[int, dict[int, int]] = {slot: {} for slot in SLOTS}  # hash -> key

    def _holds(self, slot: int, key: int) -> bool:
        return slot in self.holders.get(key, ())

    def _drop_holder(self, slot: int, key: int) -> bool:
        holders = self.holders.get(key)
        if holders is None or slot not in holders:
            return False
        holders.discard(slot)
        if not holders:
            del self.holders[key]
        return True

    @rule(
        slot=st.sampled_from(SLOTS),
        path=st.integers(0, PATHS - 1),
        start=st.integers(0, DEPTH - 1),
        length=st.integers(1, DEPTH),
        salt=st.integers(0, 2),
    )
    def store(self, slot: int, path: int, start: int, length: int, salt: int) -> None:
        chain = PATH_KEYS[path][start : start + length]
        parent = keys.ROOT if start == 0 else PATH_KEYS[path][start - 1]
        # engine hashes: per (slot, path, block), sometimes reused for other tokens (salt)
        hashes = [(slot * 100 + path * 10 + salt) * 1000 + start + i for i in range(len(chain))]
        expected_new = 0
        for engine_hash, key in zip(hashes, chain, strict=True):
            previous = self.maps[slot].get(engine_hash)
            if previous is not None and previous != key:
                self._drop_holder(slot, previous)
            self.maps[slot][engine_hash] = key
            holders = self.holders.setdefault(key, set())
            if slot not in holders:
                holders.add(slot)
                expected_new += 1
        assert self.table.store_keys(slot, parent, hashes, chain) == expected_new

    @rule(slot=st.sampled_from(SLOTS), data=st.data())
    def remove(self, slot: int, data: st.DataObject) -> None:
        mapped = sorted(self.maps[slot])
        picks = data.draw(st.lists(st.sampled_from(mapped), max_size=4)) if mapped else []
        hashes = [*dict.fromkeys(picks), 999_999_999]  # plus one this slot never mapped
        removed = 0
        missing = []
        for engine_hash in hashes:
            key = self.maps[slot].pop(engine_hash, None)
            if key is None:
                missing.append(engine_hash)
            elif self._drop_holder(slot, key):
                removed += 1
        assert self.table.remove_plain(slot, hashes) == (removed, missing)

    @rule(slot=st.sampled_from(SLOTS))
    def clear(self, slot: int) -> None:
        held = sum(1 for h in self.holders.values() if slot in h)
        for key in list(self.holders):
            self._drop_holder(slot, key)
        self.maps[slot] = {}
        assert self.table.clear_slot(slot) == held

    @precondition(lambda self: len(self.holders) > 2)
    @rule(fraction=st.floats(0.0, 1.0))
    def evict(self, fraction: float) -> None:
        before = len(self.table)
        target = int(before * fraction)
        evicted = self.table.evict(target)
        assert len(self.table) <= target
        assert evicted == before - len(self.table)
        for key in [k for k in self.holders if k not in self.table]:
            del self.holders[key]  # the model learns which keys went
        for slot, mapped in self.maps.items():  # and which dangling mappings a sweep dropped
            for engine_hash in [h for h, k in mapped.items() if not self._holds(slot, k)]:
                if self.table.resolve(slot, engine_hash) is None:
                    del mapped[engine_hash]

    @rule(path=st.integers(0, PATHS - 1), allowed=st.sets(st.sampled_from(SLOTS)))
    def walk(self, path: int, allowed: set[int]) -> None:
        mask = sum(1 << s for s in allowed)
        runs, matched = self.table.walk(path_tokens(path), None, mask, True)
        expected: dict[int, int] = {}
        alive = set(allowed)
        for position, key in enumerate(PATH_KEYS[path]):
            holding = alive & self.holders.get(key, set())
            for slot in alive - holding:
                if position:
                    expected[slot] = position
            alive = holding
            if not alive:
                break
        else:
            expected.update(dict.fromkeys(alive, DEPTH))
        assert runs == expected
        assert matched == PATH_KEYS[path][: max(expected.values(), default=0)]

    @invariant()
    def holders_counts_and_sizes_agree(self) -> None:
        assert len(self.table) == len(self.holders)
        for key, slots in self.holders.items():
            assert self.table.holders(key) == sum(1 << s for s in slots)
        for slot in SLOTS:
            held = sum(1 for h in self.holders.values() if slot in h)
            assert self.table.count(slot) == held
        entries, _, nbytes, _ = self.table.sizes()
        assert entries == sum(len(h) for h in self.holders.values())
        assert nbytes >= 0

    @invariant()
    def resolve_names_what_the_slot_stored(self) -> None:
        for slot, mapped in self.maps.items():
            for engine_hash, key in mapped.items():
                got = self.table.resolve(slot, engine_hash)
                # a mapping whose key the slot no longer holds (capacity eviction removed it,
                # maybe another slot stored it again) may stay ("dangling") or be swept
                assert got == key or (got is None and not self._holds(slot, key))


TestKeyTableModel = KeyTableModel.TestCase
TestKeyTableModel.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
