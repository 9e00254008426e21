"""PrefixIndex rules, one test per rule of the issue (block size 4 unless said otherwise)."""

from typing import Any

import pytest

from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import (
    DEFAULT_MEDIUM_WEIGHTS,
    ApplyOutcome,
    EndpointContext,
    Limits,
    Match,
    Query,
)
from kvsync.model import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EndpointId,
    EngineHash,
    Event,
    encode_tokens,
)

A = EndpointId("default/pod-a", 0)
B = EndpointId("default/pod-b", 0)
B1 = EndpointId("default/pod-b", 1)
LLAMA = EndpointContext("llama")
BS = 4


def toks(*blocks: int) -> list[int]:
    """Tokens of the given block numbers: block n is [n*4, n*4+1, n*4+2, n*4+3]."""
    return [t for b in blocks for t in range(b * BS, b * BS + BS)]


def stored(
    hashes: list[int], blocks: list[int], parent: int | None = None, **kw: Any
) -> BlockStored:
    engine_hashes: list[EngineHash] = list(hashes)
    return BlockStored(
        engine_hashes, parent, encode_tokens(toks(*blocks)), kw.pop("block_size", BS), **kw
    )


def removed(hashes: list[int], **kw: Any) -> BlockRemoved:
    engine_hashes: list[EngineHash] = list(hashes)
    return BlockRemoved(engine_hashes, **kw)


def apply(
    index: PrefixIndex, endpoint: EndpointId, *events: Event, ctx: EndpointContext = LLAMA
) -> ApplyOutcome:
    return index.apply(endpoint, ctx, list(events), 0.0)


def runs(index: PrefixIndex, tokens: list[int], **kw: Any) -> dict[EndpointId, int]:
    result = index.match(Query(kw.pop("model", "llama"), tokens, **kw), 0.0)
    return {m.endpoint: m.matched_blocks for m in result.matches}


def only(index: PrefixIndex, tokens: list[int], **kw: Any) -> Match:
    (match,) = index.match(Query("llama", tokens, **kw), 0.0).matches
    return match


def test_chaining_inside_one_event() -> None:
    index = PrefixIndex()
    out = apply(index, A, stored([10, 11, 12], [0, 1, 2]))
    assert out.stored_blocks == 3
    assert out.events == {"BlockStored": 1}
    assert runs(index, toks(0, 1, 2)) == {A: 3}
    assert runs(index, toks(0, 1)) == {A: 2}
    assert runs(index, toks(0, 7, 2)) == {A: 1}  # block 2 after another block 1 is another key
    assert runs(index, toks(1, 2)) == {}  # block 1 is not a root


def test_chaining_through_the_parent_hash() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]), stored([12, 13], [2, 3], parent=11))
    assert runs(index, toks(0, 1, 2, 3, 4)) == {A: 4}
    # the same tokens in one event give the same keys: another endpoint stores them at once
    apply(index, B, stored([90, 91, 92, 93], [0, 1, 2, 3]))
    assert runs(index, toks(0, 1, 2, 3)) == {A: 4, B: 4}


def test_unknown_parent_is_not_rooted_and_is_reported() -> None:
    index = PrefixIndex()
    out = apply(index, A, stored([12, 13], [2, 3], parent=11))
    assert out.rejected == {"unknown_parent": 1}
    assert out.rejected_blocks == 2
    assert out.stored_blocks == 0
    assert runs(index, toks(2, 3)) == {}  # rooting it at the top would invent this match
    assert index.stats().keys == 0


def test_a_parent_is_resolved_per_endpoint() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]))
    out = apply(index, B, stored([12], [2], parent=11))  # A's hash, but B never stored it
    assert out.rejected == {"unknown_parent": 1}
    assert runs(index, toks(0, 1, 2)) == {A: 2}


def test_removal_by_one_endpoint_leaves_the_others_copy() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]))
    apply(index, B, stored([10, 11], [0, 1]))
    out = apply(index, A, removed([11]))
    assert out.removed_blocks == 1
    assert runs(index, toks(0, 1)) == {A: 1, B: 2}
    assert index.blocks_held(A) == 1
    assert index.blocks_held(B) == 2


def test_inner_removal_keeps_descendants_and_a_restore_reconnects() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11, 12], [0, 1, 2]))
    apply(index, A, removed([11]))
    assert runs(index, toks(0, 1, 2)) == {A: 1}  # matching stops at the first missing block
    assert index.blocks_held(A) == 2  # block 2 stays
    out = apply(index, A, stored([11], [1], parent=10))
    assert out.stored_blocks == 1
    assert runs(index, toks(0, 1, 2)) == {A: 3}


def test_each_endpoint_has_its_own_contiguous_run() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]))
    apply(index, B, stored([20, 21, 22], [0, 1, 2]))
    apply(index, B, removed([21]))
    # A holds 0-1, B holds 0 and 2: B's run stops at 1 even though A holds block 1
    assert runs(index, toks(0, 1, 2)) == {A: 2, B: 1}


def test_stores_are_idempotent() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]))
    out = apply(index, A, stored([10, 11], [0, 1]))
    assert out.stored_blocks == 0
    assert index.blocks_held(A) == 2
    apply(index, A, removed([11]))
    assert runs(index, toks(0, 1)) == {A: 1}


def test_media_are_tracked_per_copy() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]), stored([10, 11], [0, 1], medium="CPU"))
    match = only(index, toks(0, 1))
    assert match.by_medium == {"GPU": 2, "CPU": 2}
    assert match.score == 2.0  # best medium per block
    out = apply(index, A, removed([10], medium="GPU"))
    assert out.removed_blocks == 0  # still held in CPU
    match = only(index, toks(0, 1))
    assert match.matched_blocks == 2
    assert match.by_medium == {"CPU": 2, "GPU": 1}
    assert match.score == pytest.approx(0.8 + 1.0)
    apply(index, A, removed([10], medium="CPU"))
    assert runs(index, toks(0, 1)) == {}
    assert index.blocks_held(A) == 1


def test_medium_none_means_gpu_and_unknown_media_weigh_half() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10], [0], medium=None), stored([10], [0], medium="STORAGE"))
    apply(index, A, removed([10], medium="GPU"))
    match = only(index, toks(0))
    assert match.by_medium == {"STORAGE": 1}
    assert match.score == 0.5
    assert DEFAULT_MEDIUM_WEIGHTS == {"GPU": 1.0, "CPU": 0.8}


def test_medium_weights_are_configurable() -> None:
    index = PrefixIndex(medium_weights={"GPU": 2.0, "CPU": 1.0})
    apply(index, A, stored([10, 11], [0, 1], medium="CPU"))
    assert only(index, toks(0, 1)).score == 2.0


def test_a_star_weight_is_the_weight_of_every_medium_not_named() -> None:
    index = PrefixIndex(medium_weights={"GPU": 1.0, "CPU": 0.8, "*": 0.25})
    apply(index, A, stored([10, 11], [0, 1], medium="STORAGE"))
    apply(index, B, stored([10, 11], [0, 1], medium="CPU"))
    assert only(index, toks(0, 1), pods=frozenset({A.pod})).score == 0.5
    assert only(index, toks(0, 1), pods=frozenset({B.pod})).score == pytest.approx(1.6)


def test_removal_in_one_group_leaves_the_other_group() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1], group_idx=0), stored([10, 11], [0, 1], group_idx=1))
    apply(index, A, removed([11], group_idx=1))
    assert runs(index, toks(0, 1)) == {A: 2}
    apply(index, A, removed([11], group_idx=None))  # None is group 0
    assert runs(index, toks(0, 1)) == {A: 1}
    assert only(index, toks(0)).by_medium == {"GPU": 1}


def test_all_blocks_cleared_drops_every_copy_of_that_endpoint_only() -> None:
    index = PrefixIndex()
    apply(
        index,
        A,
        stored([10, 11], [0, 1]),
        stored([10], [0], medium="CPU"),
        stored([10], [0], group_idx=1),
        stored([50], [5], lora_name="sql"),
    )
    apply(index, B, stored([10], [0]))
    out = apply(index, A, AllBlocksCleared())
    assert out.cleared == 1
    assert out.removed_blocks == 3
    assert index.blocks_held(A) == 0
    assert runs(index, toks(0, 1)) == {B: 1}
    assert runs(index, toks(5), lora_name="sql") == {}
    # the endpoint's engine hashes went too: a child of its old block has an unknown parent
    assert apply(index, A, stored([12], [2], parent=11)).rejected == {"unknown_parent": 1}


def test_drop_endpoint_forgets_it_in_every_context_and_frees_its_slot() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]), stored([50], [5], lora_name="sql"))
    apply(index, B, stored([10], [0]))
    assert index.drop_endpoint(A) == 3
    assert index.drop_endpoint(A) == 0
    assert runs(index, toks(0, 1)) == {B: 1}
    apply(index, B1, stored([70], [7]))  # reuses A's slot: inherits nothing
    assert runs(index, toks(0, 1)) == {B: 1}
    assert index.blocks_held(B1) == 1
    assert index.stats().endpoints == 2


def test_removing_a_hash_never_stored_is_counted_not_fatal() -> None:
    index = PrefixIndex()
    out = apply(index, A, removed([99, 98]))
    assert out.unknown_removed == 2
    assert out.removed_blocks == 0


def test_an_engine_hash_reused_for_other_tokens_replaces_the_old_block() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10], [0]))
    apply(index, A, stored([10], [3]))
    assert runs(index, toks(0)) == {}
    assert runs(index, toks(3)) == {A: 1}
    assert index.blocks_held(A) == 1


def test_lora_name_and_extra_keys_select_the_adapter() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1], lora_name="sql", extra_keys=[["sql"], ["sql"]]))
    assert runs(index, toks(0, 1), lora_name="sql") == {A: 2}
    assert runs(index, toks(0, 1)) == {}
    assert runs(index, toks(0, 1), lora_name="other") == {}


def test_lora_id_is_the_adapter_when_no_name_is_known() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10], [0], lora_id=3))  # vLLM < 0.14
    apply(index, B, stored([20], [0]), ctx=EndpointContext("llama", lora_id=3))  # pod label
    assert runs(index, toks(0), lora_id=3) == {A: 1, B: 1}
    assert runs(index, toks(0), lora_name="3") == {}
    assert runs(index, toks(0)) == {}


def test_salted_blocks_match_only_the_same_salt() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1], extra_keys=[["salt-42"], None]))
    assert runs(index, toks(0, 1), cache_salt="salt-42") == {A: 2}
    assert runs(index, toks(0, 1)) == {}
    assert runs(index, toks(0, 1), cache_salt="salt-43") == {}
    apply(index, B, stored([20, 21], [0, 1]))
    assert runs(index, toks(0, 1), cache_salt="salt-42") == {A: 2}  # B's plain blocks do not


def test_salt_with_a_lora_name_in_the_extra_keys() -> None:
    index = PrefixIndex()
    extra: list[list[Any] | None] = [["sql", "salt-1"], ["sql"]]
    apply(index, A, stored([10, 11], [0, 1], lora_name="sql", extra_keys=extra))
    assert runs(index, toks(0, 1), lora_name="sql", cache_salt="salt-1") == {A: 2}
    assert runs(index, toks(0, 1), lora_name="sql") == {}


def test_multimodal_blocks_never_match_a_text_query() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1], extra_keys=[[["mm-hash", 0]], None]))
    assert runs(index, toks(0, 1)) == {}
    assert index.blocks_held(A) == 2


def test_unknown_model_or_adapter_gets_the_default_block_size() -> None:
    index = PrefixIndex(default_block_size=16)
    apply(index, A, stored([10], [0]))
    for query in (Query("other", list(range(40))), Query("llama", list(range(40)), lora_name="x")):
        result = index.match(query, 0.0)
        assert (result.block_size, result.query_blocks, list(result.matches)) == (16, 2, [])


def test_a_query_shorter_than_one_block() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10], [0]))
    result = index.match(Query("llama", [0, 1, 2]), 0.0)
    assert (result.block_size, result.query_blocks, list(result.matches)) == (4, 0, [])


def test_result_fields_and_percent() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]))
    result = index.match(Query("llama", [*toks(0, 1, 2), 99]), 0.0)  # partial tail ignored
    assert result.block_size == 4
    assert result.query_blocks == 3
    (match,) = result.matches
    assert (match.matched_blocks, match.matched_tokens, match.score) == (2, 8, 2.0)
    assert result.percent(match) == 66


def test_pods_filter_keeps_every_dp_rank_of_the_named_pods() -> None:
    index = PrefixIndex()
    for n, endpoint in enumerate((A, B, B1)):
        apply(index, endpoint, stored([10 + n], [0]))
    assert runs(index, toks(0), pods=frozenset({"default/pod-b"})) == {B: 1, B1: 1}
    assert runs(index, toks(0), pods=frozenset({"default/pod-b", "nope"})) == {B: 1, B1: 1}
    assert runs(index, toks(0), pods=frozenset()) == {}
    assert runs(index, toks(0)) == {A: 1, B: 1, B1: 1}


def test_matches_sort_by_score_then_blocks_then_pod_and_rank() -> None:
    index = PrefixIndex()
    apply(index, B1, stored([1, 2], [0, 1]))
    apply(index, B, stored([1, 2], [0, 1]))
    apply(index, A, stored([1], [0]))
    apply(index, EndpointId("default/pod-c"), stored([1, 2], [0, 1], medium="CPU"))
    result = index.match(Query("llama", toks(0, 1)), 0.0)
    order = [(m.endpoint, m.matched_blocks, m.score) for m in result.matches]
    assert order == [(B, 2, 2.0), (B1, 2, 2.0), (EndpointId("default/pod-c"), 2, 1.6), (A, 1, 1.0)]


def test_several_block_sizes_answer_for_each_and_keep_each_endpoints_best() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]))  # block size 4: 8 tokens
    apply(index, B, BlockStored([20], None, encode_tokens(toks(0, 1)), 8))  # block size 8: 8 tokens
    apply(index, B, stored([21], [0]))  # and 4 tokens at block size 4
    result = index.match(Query("llama", toks(0, 1, 2)), 0.0)
    tokens = {m.endpoint: m.matched_tokens for m in result.matches}
    assert tokens == {A: 8, B: 8}
    assert {m.endpoint: m.block_size for m in result.matches} == {A: 4, B: 8}


def test_capacity_eviction_takes_leaves_before_ancestors() -> None:
    index = PrefixIndex(Limits(max_keys_per_context=10))
    apply(index, A, stored([1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5]))  # the oldest chain
    out = apply(index, A, stored([20, 21, 22, 23, 24], [30, 31, 32, 33, 34]))
    assert out.evicted == {"max_keys": 2}  # 11 keys, down to 97 % of 10 -> 9
    assert index.evictions == {"max_keys": 2}
    # the old chain lost its tail, never its root: its first four blocks still match
    assert runs(index, toks(0, 1, 2, 3, 4, 5)) == {A: 4}
    assert runs(index, toks(30, 31, 32, 33, 34)) == {A: 5}
    assert index.blocks_held(A) == 9
    assert index.stats().keys == 9


def test_capacity_eviction_skips_an_old_ancestor_with_new_children() -> None:
    index = PrefixIndex(Limits(max_keys_per_context=4))
    apply(index, A, stored([1], [0]))  # the system prompt, stored first
    apply(index, A, stored([2], [1], parent=1), stored([3], [2], parent=1))
    out = apply(index, A, stored([4], [3], parent=1), stored([5], [4], parent=1))
    assert out.evicted == {"max_keys": 2}
    assert runs(index, toks(0)) == {A: 1}  # the shared root survives
    assert runs(index, toks(0, 3)) == {A: 2}
    assert runs(index, toks(0, 1)) == {A: 1}  # an old leaf went


def test_max_contexts_drops_the_least_recently_used_context() -> None:
    index = PrefixIndex(Limits(max_contexts=2))
    apply(index, A, stored([1], [0], lora_name="x"))
    apply(index, A, stored([2], [0], lora_name="y"))
    index.match(Query("llama", toks(0), lora_name="x"), 0.0)  # a lookup makes x recent
    out = apply(index, A, stored([3], [0], lora_name="z"))
    assert out.evicted == {"max_contexts": 1}
    assert runs(index, toks(0), lora_name="x") == {A: 1}
    assert runs(index, toks(0), lora_name="y") == {}
    assert index.blocks_held(A) == 2
    assert index.stats().contexts == 2


def test_idle_contexts_expire_unless_an_event_or_a_lookup_touched_them() -> None:
    index = PrefixIndex(Limits(idle_ttl_seconds=60))
    index.apply(A, LLAMA, [stored([1], [0], lora_name="x")], 0.0)
    index.apply(A, LLAMA, [stored([2, 3], [0, 1], lora_name="y")], 0.0)
    assert index.match(Query("llama", toks(0), lora_name="x"), 50.0).matches
    out = index.apply(B, LLAMA, [stored([3], [0])], 70.0)
    assert out.evicted == {"idle_ttl": 2}  # y's two blocks
    assert not index.match(Query("llama", toks(0), lora_name="y"), 70.0).matches
    assert index.match(Query("llama", toks(0), lora_name="x"), 70.0).matches
    assert index.evictions == {"idle_ttl": 2}
    assert index.blocks_held(A) == 1
    # with no event at all, a lookup expires idle contexts too: x and B's base context
    assert not index.match(Query("llama", toks(0), lora_name="x"), 200.0).matches
    assert index.evictions == {"idle_ttl": 4}
    assert index.blocks_held(A) == index.blocks_held(B) == 0
    assert index.stats().contexts == 0


def test_stats_count_contexts_keys_and_entries() -> None:
    index = PrefixIndex()
    apply(index, A, stored([10, 11], [0, 1]), stored([50], [5], lora_name="sql"))
    apply(index, B, stored([20], [0]))
    stats = index.stats()
    assert (stats.endpoints, stats.contexts, stats.keys, stats.entries) == (2, 2, 3, 4)
    assert stats.engine_hashes == 4
    assert stats.bytes_estimate > 0
    assert stats.blocks == {A: 3, B: 1}


def _hybrid(model: str) -> tuple[PrefixIndex, EndpointContext]:
    """A hybrid model on A: group 0 at block size 4 (hashes 10, 11), group 1 at block size 8,
    whose one block vLLM publishes under the joined hash of its two sub-blocks: 11 again."""
    index, ctx = PrefixIndex(), EndpointContext(model)
    apply(index, A, stored([10, 11], [0, 1], group_idx=0), ctx=ctx)
    eight = BlockStored([11], None, encode_tokens(toks(0, 1)), 8, group_idx=1)
    apply(index, A, eight, ctx=ctx)
    return index, ctx


def _model_whose_contexts_iterate(first_block_size: int) -> str:
    """A model name for which the endpoint's contexts come out of their set with the given
    block size first: the removal must not depend on that order, so the test tries both."""
    for n in range(1000):
        index, _ = _hybrid(f"hybrid-{n}")
        (slot,) = index._slot_of.values()
        if next(iter(index._in[slot]))[2] == first_block_size:
            return f"hybrid-{n}"
    raise AssertionError("no model name gives that order")


@pytest.mark.parametrize("first_block_size", [4, 8])
def test_a_removal_applies_in_every_context_that_holds_the_named_copy(
    first_block_size: int,
) -> None:
    index, ctx = _hybrid(_model_whose_contexts_iterate(first_block_size))
    model = ctx.model
    assert runs(index, toks(0, 1), model=model) == {A: 2}  # 8 tokens in either context
    out = apply(index, A, removed([11], group_idx=1), removed([11], group_idx=0), ctx=ctx)
    assert (out.removed_blocks, out.unknown_removed) == (2, 0)
    result = index.match(Query(model, toks(0, 1)), 0.0)
    assert [(m.matched_tokens, m.block_size) for m in result.matches] == [(4, 4)]


def test_clearing_an_endpoint_costs_what_it_holds_not_what_the_context_holds() -> None:
    index = PrefixIndex()
    blocks = list(range(2000))  # B holds many CPU copies: breakdowns in the context
    apply(index, B, stored([1000 + b for b in blocks], blocks, medium="CPU"))
    apply(index, A, stored([10, 11], [0, 1], medium="CPU"))
    (ctx,) = index._contexts.values()
    slot_a, slot_b = index._slot_of[A], index._slot_of[B]
    assert len(ctx.copied[slot_a]) == 2  # what A's clear walks
    assert len(ctx.copied[slot_b]) == 2000
    out = apply(index, A, AllBlocksCleared())
    assert out.removed_blocks == 2
    assert slot_a not in ctx.copied
    assert len(ctx.copies) == 2000  # B's breakdowns untouched (block 0 and 1: B's alone now)
    assert only(index, toks(0, 1)).by_medium == {"CPU": 2}
    assert index.drop_endpoint(B) == 2000
    assert not ctx.copied
