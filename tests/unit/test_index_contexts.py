"""kvsync.contexts: the per-context tables stay bounded and consistent under churn."""

from kvsync import keys
from kvsync.context_tables import PLAIN, u64, u64s
from kvsync.contexts import Context
from kvsync.index import EndpointContext, Limits, PrefixIndex, Query
from kvsync.model import BlockRemoved, BlockStored, EndpointId, EngineHash

A = EndpointId("pod-a")


def chain_keys(first_token: int, n: int) -> list[int]:
    return keys.chain(keys.ROOT, keys.token_view(range(first_token, first_token + 4 * n)), 4, n)


def test_engine_map_stays_bounded_under_churn() -> None:
    """A PreshMap counts deleted cells as filled and only grows; the context rebuilds it."""
    ctx = Context(4, 0.0)
    for round_ in range(2_000):
        hashes = [round_ * 10 + i for i in range(5)]
        ctx.store(0, keys.ROOT, hashes, chain_keys(round_ * 100, 5), PLAIN)
        for engine_hash, key in zip(hashes, chain_keys(round_ * 100, 5), strict=True):
            assert ctx.remove(0, engine_hash, key, PLAIN)
    assert ctx.engine_live[0] == 0
    assert len(ctx.engine[0]) <= 64 + 2  # cells, deleted ones included
    assert not ctx.held
    assert ctx.counts[0] == 0


def test_keys_leave_when_their_last_holder_goes() -> None:
    ctx = Context(4, 0.0)
    ks = chain_keys(0, 3)
    ctx.store(0, keys.ROOT, [1, 2, 3], ks, PLAIN)
    ctx.store(1, keys.ROOT, [1, 2, 3], ks, PLAIN)
    assert ctx.holders(ks[2]) == 0b11
    assert ctx.clear_slot(0) == 3
    assert ctx.holders(ks[2]) == 0b10
    assert ctx.clear_slot(1) == 3
    assert not ctx.held


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
    index.apply(A, ctx, [BlockStored([1, 2, 3], None, list(range(12)), 4)], 0.0)
    out = index.apply(A, ctx, [BlockStored([9, 10], None, list(range(100, 108)), 4)], 0.0)
    assert out.evicted == {"max_keys": 2}  # 5 keys, down to 97 % of 4 -> 3: two leaves
    assert index.match(Query("m", list(range(12))), 0.0).matches[0].matched_blocks == 1
    index.apply(A, ctx, [BlockRemoved([9, 10])], 0.0)  # make room
    # blocks 1 and 2 (hashes 2, 3) left the index, but their engine hashes still name the keys
    out = index.apply(A, ctx, [BlockStored([4], 3, list(range(12, 16)), 4)], 0.0)
    assert not out.rejected
    # the run stops at the missing block; re-storing it reconnects the chain
    assert index.match(Query("m", list(range(16))), 0.0).matches[0].matched_blocks == 1
    out = index.apply(A, ctx, [BlockStored([2, 3], 1, list(range(4, 12)), 4)], 0.0)
    assert not out.evicted
    assert index.match(Query("m", list(range(16))), 0.0).matches[0].matched_blocks == 4
