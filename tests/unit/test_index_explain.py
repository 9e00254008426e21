"""PrefixIndex.explain: the run's stop block and what the index remembers of it (capped)."""

from kvsync import _native
from kvsync.index import keys
from kvsync.index.explain import BlockMemory, Explaining
from kvsync.index.memory.backend import MemoryBackend
from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import EndpointContext, Limits, Query
from kvsync.model import BlockRemoved, BlockStored, EndpointId, encode_tokens

BS = 4
A, B = EndpointId("a"), EndpointId("b")
CTX = EndpointContext("m")
TOKENS = list(range(100, 100 + 4 * BS))


def stored(tokens: list[int], first: int) -> BlockStored:
    n = len(tokens) // BS
    return BlockStored(list(range(first, first + n)), None, encode_tokens(tokens), BS)


def test_a_removed_block_is_named_with_its_time_and_never_stored_is_not() -> None:
    index = PrefixIndex()
    index.apply(A, CTX, [stored(TOKENS, 1)], 10.0)
    index.apply(B, CTX, [stored(TOKENS[: 2 * BS], 50)], 10.0)
    index.apply(A, CTX, [BlockRemoved([3])], 12.5)
    explained = index.explain(Query("m", TOKENS), 13.0)
    runs = {run.endpoint: run for run in explained.runs}
    assert (runs[A].matched_blocks, runs[A].stopped_at) == (2, 2)
    assert runs[A].memory == BlockMemory("removed", 12.5)
    assert (runs[B].matched_blocks, runs[B].memory) == (2, None)  # never stored block 2
    assert explained.query_blocks == 4


def test_capacity_eviction_and_gone_contexts_are_remembered() -> None:
    index = PrefixIndex(Limits(max_keys_per_context=6, max_contexts=1))
    index.apply(A, CTX, [stored(TOKENS, 1)], 1.0)
    index.apply(A, CTX, [stored(list(range(900, 900 + 3 * BS)), 20)], 2.0)
    [run] = index.explain(Query("m", TOKENS), 3.0).runs
    assert run.matched_blocks < 4
    assert run.memory == BlockMemory("evicted", 2.0, "max_keys")
    index.apply(A, EndpointContext("other"), [stored(TOKENS, 40)], 4.0)  # m's context goes
    gone = index.explain(Query("m", TOKENS), 5.0)
    assert (gone.runs, gone.context_gone) == ((), BlockMemory("evicted", 4.0, "max_contexts"))


def test_the_memory_is_capped_and_can_be_off() -> None:
    index = PrefixIndex(remember=2)
    index.apply(A, CTX, [stored(TOKENS, 1)], 1.0)
    index.apply(A, CTX, [BlockRemoved([4]), BlockRemoved([3]), BlockRemoved([2])], 2.0)
    assert index.remembered() == 2
    [run] = index.explain(Query("m", TOKENS), 3.0).runs
    assert (run.matched_blocks, run.memory) == (1, BlockMemory("removed", 2.0))  # block 1: kept
    off = PrefixIndex(remember=0)
    off.apply(A, CTX, [stored(TOKENS, 1)], 1.0)
    off.apply(A, CTX, [BlockRemoved([3])], 2.0)
    [run] = off.explain(Query("m", TOKENS), 3.0).runs
    assert (run.matched_blocks, run.memory) == (2, None)


def test_the_memory_backend_has_the_capability() -> None:
    assert isinstance(MemoryBackend(), Explaining)


def test_remove_plain_hands_back_the_keys_it_released() -> None:
    table = _native.KeyTable(BS)
    table.store(0, _native.ROOT, [1, 2], encode_tokens(TOKENS[: 2 * BS]), None)
    released: list[int] = []
    removed, missing = table.remove_plain(0, [2, 7], released)
    assert (removed, missing) == (1, [7])
    assert released == [keys.chain(keys.ROOT, TOKENS[: 2 * BS], BS)[1]]  # block 1's key
    assert released[0] not in table
