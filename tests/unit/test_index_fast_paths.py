"""PrefixIndex fast paths answer exactly what the general paths answer.

The index applies consecutive plain removals as one run (``Context.remove_plain``), builds the
answers of a one-block-size lookup over plain copies already in order (by endpoint rank, not
by comparing answers) and skips the idle-expiry walk while no context can be idle; all must be
invisible from outside: the same outcome counts, stats, holdings and lookups as one event per
batch, the contract's answer order, and expiry on time even when ``now`` goes back.
"""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import ApplyOutcome, EndpointContext, Limits, Query
from kvsync.model import BlockRemoved, BlockStored, EndpointId, EngineHash, Event, encode_tokens

A = EndpointId("default/pod-a", 0)
B = EndpointId("default/pod-b", 0)
LLAMA = EndpointContext("llama")
BS = 4
CHAINS = 3
CHAIN_BLOCKS = 6


def chain_tokens(chain: int, n: int = CHAIN_BLOCKS) -> list[int]:
    return list(range(chain * 1000, chain * 1000 + n * BS))


def chain_hashes(chain: int) -> list[EngineHash]:
    return [chain * 100 + i for i in range(CHAIN_BLOCKS)]


def seeded(cpu: bool = True) -> PrefixIndex:
    """Three chains of six blocks on A (chain 0 also in CPU if ``cpu``), chain 0 on B too.
    Without a CPU copy no block has a breakdown, and removals take ``remove_plain``'s loop."""
    index = PrefixIndex()
    for chain in range(CHAINS):
        event = BlockStored(chain_hashes(chain), None, encode_tokens(chain_tokens(chain)), BS)
        index.apply(A, LLAMA, [event], 0.0)
    if cpu:
        event = BlockStored(chain_hashes(0), None, encode_tokens(chain_tokens(0)), BS, medium="CPU")
        index.apply(A, LLAMA, [event], 0.0)
    index.apply(
        B, LLAMA, [BlockStored(chain_hashes(0), None, encode_tokens(chain_tokens(0)), BS)], 0.0
    )
    return index


def observed(index: PrefixIndex) -> dict[str, Any]:
    """Everything a caller can see of the index."""
    answers = []
    for chain in range(CHAINS):
        result = index.match(Query("llama", chain_tokens(chain)), 0.0)
        answers.append(
            [(m.endpoint, m.matched_blocks, m.score, m.by_medium) for m in result.matches]
        )
    return {"stats": index.stats(), "answers": answers}


def totals(outcomes: list[ApplyOutcome]) -> tuple[int, int, int]:
    return (
        sum(o.removed_blocks for o in outcomes),
        sum(o.unknown_removed for o in outcomes),
        sum(o.events.get("BlockRemoved", 0) for o in outcomes),
    )


removal = st.tuples(
    st.integers(0, CHAINS - 1),
    st.integers(0, CHAIN_BLOCKS),  # CHAIN_BLOCKS: a hash A never stored
    st.sampled_from([None, "GPU", "CPU"]),
)


@settings(max_examples=150, deadline=None)
@given(removals=st.lists(removal, max_size=12), with_store=st.booleans(), cpu=st.booleans())
def test_a_batch_of_removals_equals_the_general_path_one_removal_per_batch(
    removals: list[tuple[int, int, str | None]], with_store: bool, cpu: bool
) -> None:
    events: list[Event] = [
        BlockRemoved([chain * 100 + block], medium=medium) for chain, block, medium in removals
    ]
    if with_store:  # a BlockStored in the middle ends a run
        chain3 = BlockStored([900, 901], None, encode_tokens(chain_tokens(9, 2)), BS)
        events.insert(len(events) // 2, chain3)
    # A second context on A sends the reference down the general path (a context lookup and a
    # Context.remove call per hash); the batched index gets it only after its removals.
    adapter = BlockStored([7], None, encode_tokens(chain_tokens(7, 1)), BS, lora_name="x")
    batched, one_by_one = seeded(cpu), seeded(cpu)
    one_by_one.apply(A, LLAMA, [adapter], 0.0)
    together = [batched.apply(A, LLAMA, events, 0.0)]
    apart = [one_by_one.apply(A, LLAMA, [event], 0.0) for event in events]
    batched.apply(A, LLAMA, [adapter], 0.0)
    assert totals(together) == totals(apart)
    assert observed(batched) == observed(one_by_one)


def test_a_run_removes_in_order_and_counts_a_repeat_as_unknown() -> None:
    index = seeded(cpu=False)
    hashes = chain_hashes(1)
    out = index.apply(A, LLAMA, [BlockRemoved([h]) for h in [hashes[5], hashes[4], hashes[5]]], 0.0)
    assert (out.removed_blocks, out.unknown_removed) == (2, 1)
    assert out.events == {"BlockRemoved": 3}
    (match,) = index.match(Query("llama", chain_tokens(1)), 0.0).matches
    assert (match.endpoint, match.matched_blocks) == (A, 4)


def test_a_removal_run_keeps_a_block_held_in_another_medium() -> None:
    index = seeded()
    out = index.apply(A, LLAMA, [BlockRemoved([h]) for h in chain_hashes(0)], 0.0)
    assert out.removed_blocks == 0  # A still holds every block of chain 0 in CPU
    result = index.match(Query("llama", chain_tokens(0)), 0.0)
    by_endpoint = {m.endpoint: m.by_medium for m in result.matches}
    assert by_endpoint == {A: {"CPU": CHAIN_BLOCKS}, B: {"GPU": CHAIN_BLOCKS}}


def test_removing_a_capacity_evicted_block_is_neither_removed_nor_unknown() -> None:
    index = PrefixIndex(Limits(max_keys_per_context=10))
    first = BlockStored(chain_hashes(0), None, encode_tokens(chain_tokens(0)), BS)
    second = BlockStored(chain_hashes(1), None, encode_tokens(chain_tokens(1)), BS)
    index.apply(A, LLAMA, [first, second], 0.0)
    assert index.evictions == {"max_keys": 3}  # 12 keys, down to 97 % of 10
    before = index.stats().engine_hashes
    evicted_leaf = chain_hashes(0)[5]
    out = index.apply(A, LLAMA, [BlockRemoved([evicted_leaf])], 0.0)
    assert (out.removed_blocks, out.unknown_removed) == (0, 0)
    assert index.stats().engine_hashes == before - 1


@pytest.mark.parametrize("cpu", [False, True])  # True: a CPU copy takes the general path
def test_answers_come_in_contract_order_whatever_the_slots(cpu: bool) -> None:
    index = PrefixIndex()
    z, b1, first = EndpointId("default/pod-z"), EndpointId("default/pod-b", 1), EndpointId("0")
    full = BlockStored(chain_hashes(0), None, encode_tokens(chain_tokens(0)), BS)
    for endpoint in (z, A, b1):  # slots 0, 1, 2: not the endpoints' order
        index.apply(endpoint, LLAMA, [full], 0.0)
    half = BlockStored(chain_hashes(0)[:3], None, encode_tokens(chain_tokens(0, 3)), BS)
    index.apply(B, LLAMA, [half], 0.0)
    before = index.match(Query("llama", chain_tokens(0)), 0.0)
    assert [m.endpoint for m in before.matches] == [A, b1, z, B]
    index.drop_endpoint(z)
    index.apply(first, LLAMA, [full], 0.0)  # takes z's slot 0, and comes first
    if cpu:
        event = BlockStored(chain_hashes(0), None, encode_tokens(chain_tokens(0)), BS, medium="CPU")
        index.apply(A, LLAMA, [event], 0.0)
    result = index.match(Query("llama", chain_tokens(0)), 0.0)
    assert [(m.endpoint, m.matched_blocks, m.score) for m in result.matches] == [
        (first, 6, 6.0),
        (A, 6, 6.0),
        (b1, 6, 6.0),
        (B, 3, 3.0),
    ]


def test_idle_expiry_stays_on_time_when_now_goes_back() -> None:
    index = PrefixIndex(Limits(idle_ttl_seconds=60))
    event = BlockStored(chain_hashes(0), None, encode_tokens(chain_tokens(0)), BS)
    index.apply(A, LLAMA, [event], 200.0)
    assert index.apply(B, LLAMA, [], 100.0).evicted == {}  # an earlier clock: nothing idle
    # This lookup looks for idle contexts (none: last used at 200), then marks its context
    # used at 180, earlier than before; 60 s after that it is idle.
    assert index.match(Query("llama", chain_tokens(0)), 180.0).matches
    assert index.apply(B, LLAMA, [], 239.0).evicted == {}
    assert index.apply(B, LLAMA, [], 245.0).evicted == {"idle_ttl": CHAIN_BLOCKS}
