"""kvsync.index.memory.context: the per-context tables stay bounded and consistent under churn."""

import msgspec

from kvsync.index import keys
from kvsync.index.keys import u64, u64s
from kvsync.index.memory.context import PLAIN, Context
from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import EndpointContext, Limits, Query
from kvsync.model import BlockRemoved, BlockStored, EndpointId, EngineHash, encode_tokens

A = EndpointId("pod-a")


def chain_keys(first_token: int, n: int) -> list[int]:
    return keys.chain(keys.ROOT, range(first_token, first_token + 4 * n), 4)


def test_engine_map_stays_bounded_under_churn() -> None:
    """Removals leave no tombstones: the memory after 2,000 store/remove rounds is what one
    round needs."""
    ctx = Context(4, 0.0)
    sizes = []
    for round_ in range(2_000):
        hashes = [round_ * 10 + i for i in range(5)]
        ctx.store_keys(0, keys.ROOT, hashes, chain_keys(round_ * 100, 5), PLAIN)
        sizes.append(ctx.nbytes())
        for engine_hash, key in zip(hashes, chain_keys(round_ * 100, 5), strict=True):
            assert ctx.remove(0, engine_hash, key, PLAIN)
    assert max(sizes) == sizes[0]
    assert ctx.table.sizes()[:2] == (0, 0)  # no entry held, no engine hash mapped
    assert ctx.is_empty()
    assert ctx.table.count(0) == 0


def test_keys_leave_when_their_last_holder_goes() -> None:
    ctx = Context(4, 0.0)
    ks = chain_keys(0, 3)
    ctx.store_keys(0, keys.ROOT, [1, 2, 3], ks, PLAIN)
    ctx.store_keys(1, keys.ROOT, [1, 2, 3], ks, PLAIN)
    assert ctx.holders(ks[2]) == 0b11
    assert ctx.clear_slot(0) == 3
    assert ctx.holders(ks[2]) == 0b10
    assert ctx.clear_slot(1) == 3
    assert ctx.is_empty()


def test_store_from_msgpack_equals_store_from_ints_and_from_keys() -> None:
    token_ids = list(range(40, 52))
    by_raw, by_ints, by_keys = Context(4, 0.0), Context(4, 0.0), Context(4, 0.0)
    raw = msgspec.Raw(msgspec.msgpack.encode(token_ids))
    assert by_raw.store(3, keys.ROOT, [1, 2, 3], raw, extras=None, copy=PLAIN) == 3
    assert by_ints.store(3, keys.ROOT, [1, 2, 3], token_ids, extras=None, copy=PLAIN) == 3
    assert by_keys.store_keys(3, keys.ROOT, [1, 2, 3], keys.chain(keys.ROOT, token_ids, 4), PLAIN)
    for ctx in (by_raw, by_ints, by_keys):
        assert [ctx.resolve(3, h) for h in (1, 2, 3)] == keys.chain(keys.ROOT, token_ids, 4)


def test_many_endpoints_share_one_key() -> None:
    """Slots beyond 64 widen every key's holder mask; masks read back exactly."""
    ctx = Context(4, 0.0)
    ks = chain_keys(0, 2)
    slots = [0, 63, 64, 130, 200]
    for slot in slots:
        ctx.store_keys(slot, keys.ROOT, [7, 8], ks, PLAIN)
    assert ctx.holders(ks[1]) == sum(1 << s for s in slots)
    runs, _ = ctx.table.walk(range(8), None, (1 << 130) | (1 << 200) | 1, False)
    assert runs == {0: 2, 130: 2, 200: 2}
    assert ctx.clear_slot(130) == 2
    assert ctx.holders(ks[0]) == sum(1 << s for s in slots if s != 130)


def test_bytes_engine_hashes_map_to_uint64() -> None:
    digest = bytes(range(32))
    assert u64(digest) == u64(bytes(range(32)))
    assert u64(digest) != u64(bytes(reversed(range(32))))
    assert u64(7) == 7
    mixed: list[EngineHash] = [digest, 5]
    assert u64s(mixed) == [u64(digest), 5]


def test_a_child_of_a_capacity_evicted_block_still_chains_correctly() -> None:
    index = PrefixIndex(Limits(max_keys_per_context=4))
    ctx = EndpointContext("m")
    index.apply(A, ctx, [BlockStored([1, 2, 3], None, encode_tokens(list(range(12))), 4)], 0.0)
    out = index.apply(
        A, ctx, [BlockStored([9, 10], None, encode_tokens(list(range(100, 108))), 4)], 0.0
    )
    assert out.evicted == {"max_keys": 2}  # 5 keys, down to 97 % of 4 -> 3: two leaves
    assert index.match(Query("m", list(range(12))), 0.0).matches[0].matched_blocks == 1
    index.apply(A, ctx, [BlockRemoved([9, 10])], 0.0)  # make room
    # blocks 1 and 2 (hashes 2, 3) left the index, but their engine hashes still name the keys
    out = index.apply(A, ctx, [BlockStored([4], 3, encode_tokens(list(range(12, 16))), 4)], 0.0)
    assert not out.rejected
    # the run stops at the missing block; re-storing it reconnects the chain
    assert index.match(Query("m", list(range(16))), 0.0).matches[0].matched_blocks == 1
    out = index.apply(A, ctx, [BlockStored([2, 3], 1, encode_tokens(list(range(4, 12))), 4)], 0.0)
    assert not out.evicted
    assert index.match(Query("m", list(range(16))), 0.0).matches[0].matched_blocks == 4
