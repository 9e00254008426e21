"""The simulated engine: vLLM's block-pool behaviour, consistent events, exact ground truth."""

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync import model
from kvsync.sim import Adapter, Context, Engine, Request, SimError, SimQuery
from kvsync.sim.groundtruth import prefix_digests, selects

LORA = Adapter(7, "sql-adapter")
PLAIN = Context(None, None, None)


class EventReplica:
    """Rebuilds what an endpoint holds from its events alone, checking them on the way.

    The oracle for "the events imply the engine's state": each hash maps to the context and
    the token prefix of its block, found through the parent chain.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.blocks: dict[model.EngineHash, tuple[Context, tuple[int, ...]]] = {}

    def apply(self, events: Sequence[model.Event]) -> None:
        for event in events:
            if isinstance(event, model.BlockStored):
                self._store(event)
            elif isinstance(event, model.BlockRemoved):
                for block_hash in event.block_hashes:
                    assert block_hash in self.blocks, "removal of a block that is not stored"
                    del self.blocks[block_hash]
            else:
                self.blocks.clear()

    def _store(self, event: model.BlockStored) -> None:
        size = self.block_size
        assert event.block_size == size
        tokens = model.token_list(event)
        assert len(tokens) == len(event.block_hashes) * size, "only full blocks"
        assert event.extra_keys is not None
        assert len(event.extra_keys) == len(event.block_hashes)
        if event.parent_block_hash is None:
            salt_keys = [k for k in event.extra_keys[0] or () if k != event.lora_name]
            context = Context(event.lora_id, event.lora_name, salt_keys[0] if salt_keys else None)
            prefix: tuple[int, ...] = ()
        else:
            assert event.parent_block_hash in self.blocks, "parent must be cached when stored"
            context, prefix = self.blocks[event.parent_block_hash]
        for i, block_hash in enumerate(event.block_hashes):
            assert block_hash not in self.blocks, "a cached block is never stored twice"
            prefix += tuple(tokens[i * size : (i + 1) * size])
            self.blocks[block_hash] = (context, prefix)

    def matched_query(self, query: SimQuery) -> int:
        contexts = {c for c, _ in self.blocks.values() if selects(query, c)}
        return max((self.matched(c, query.token_ids) for c in contexts), default=0)

    def matched(self, context: Context, tokens: Sequence[int]) -> int:
        held = {(c, prefix_digests(p, self.block_size)[-1]) for c, p in self.blocks.values()}
        count = 0
        for digest in prefix_digests(list(tokens), self.block_size):
            if (context, digest) not in held:
                break
            count += 1
        return count


def _request(
    *tokens: int,
    output: Sequence[int] = (),
    adapter: Adapter | None = None,
    salt: str | None = None,
) -> Request:
    return Request(tuple(tokens), tuple(output), adapter, salt)


def test_request_stores_its_full_blocks_chained_and_not_the_partial_tail() -> None:
    engine = Engine(num_blocks=16, block_size=4)
    events = engine.run(_request(*range(10), output=(50, 51, 52, 53)))  # 14 tokens: 3 full
    stored = [e for e in events if isinstance(e, model.BlockStored)]
    assert [len(e.block_hashes) for e in stored] == [2, 1]  # prompt blocks, then generated
    assert stored[0].parent_block_hash is None
    assert stored[1].parent_block_hash == stored[0].block_hashes[-1]
    assert model.token_list(stored[1]) == [8, 9, 50, 51]
    assert engine.cached_blocks == 3
    assert engine.held_blocks(PLAIN, [*range(10), 50, 51, 52, 53]) == 3


def test_cached_prefix_is_reused_and_not_stored_again() -> None:
    engine = Engine(num_blocks=16, block_size=4)
    engine.run(_request(*range(8)))
    events = engine.run(_request(*range(8), 100, 101, 102, 103))
    assert len(events) == 1
    assert isinstance(events[0], model.BlockStored)
    assert model.token_list(events[0]) == [100, 101, 102, 103]
    assert events[0].parent_block_hash is not None


def test_full_pool_evicts_least_recently_used_tail_first() -> None:
    engine = Engine(num_blocks=4, block_size=2, max_running=1)
    first = engine.run(_request(1, 2, 3, 4))  # blocks a0 a1
    engine.run(_request(5, 6, 7, 8))  # b0 b1: the pool is full, a0 a1 free (a1 first)
    a_hashes = first[0].block_hashes  # type: ignore[union-attr]  # a BlockStored
    events = engine.run(_request(9, 10))  # needs one block: evicts a1, the LRU tail
    assert isinstance(events[0], model.BlockRemoved)
    assert events[0].block_hashes == [a_hashes[1]]
    assert engine.held_blocks(PLAIN, [1, 2, 3, 4]) == 1


def test_jitter_evicts_inner_blocks_while_their_children_stay() -> None:
    engine = Engine(num_blocks=24, block_size=2, max_running=1, eviction_jitter=0.5, seed=3)
    replica = EventReplica(2)
    inner_evictions = 0
    for n in range(200):
        events = engine.run(_request(*(range(n % 7, n % 7 + 2 * (n % 5 + 2)))))
        for event in events:
            if isinstance(event, model.BlockRemoved):
                _, prefix = replica.blocks[event.block_hashes[0]]
                inner_evictions += any(
                    len(p) > len(prefix) and p[: len(prefix)] == prefix
                    for _, p in replica.blocks.values()
                )
            replica.apply([event])
    assert inner_evictions > 0


def test_lora_and_salt_go_into_extra_keys_and_separate_the_blocks() -> None:
    engine = Engine(num_blocks=16, block_size=2)
    tokens = (1, 2, 3, 4)
    plain = engine.run(_request(*tokens))[0]
    lora = engine.run(_request(*tokens, adapter=LORA, salt="s1"))[0]
    assert isinstance(plain, model.BlockStored)
    assert isinstance(lora, model.BlockStored)
    assert plain.extra_keys == [None, None]
    assert all(isinstance(h, bytes) and len(h) == 32 for h in plain.block_hashes)
    assert lora.extra_keys == [["sql-adapter", "s1"], ["sql-adapter"]]
    assert (lora.lora_id, lora.lora_name) == (7, "sql-adapter")
    assert not set(plain.block_hashes) & set(lora.block_hashes)
    query = SimQuery("m", tokens)
    assert engine.matched_blocks(query) == 2
    assert engine.matched_blocks(SimQuery("m", tokens, lora_name="sql-adapter")) == 0  # no salt
    salted = SimQuery("m", tokens, lora_name="sql-adapter", cache_salt="s1")
    assert engine.matched_blocks(salted) == 2
    assert engine.matched_blocks(SimQuery("m", tokens, lora_id=7, cache_salt="s1")) == 2
    assert engine.matched_blocks(SimQuery("m", tokens, lora_id=8, cache_salt="s1")) == 0


def test_clear_reports_and_restart_is_silent() -> None:
    engine = Engine(num_blocks=8, block_size=2)
    engine.run(_request(1, 2, 3, 4))
    assert engine.clear() == [model.AllBlocksCleared()]
    assert engine.cached_blocks == 0
    engine.run(_request(1, 2, 3, 4))
    engine.restart()
    assert engine.cached_blocks == 0
    assert engine.held_blocks(PLAIN, [1, 2, 3, 4]) == 0


def test_request_larger_than_the_pool_is_refused() -> None:
    engine = Engine(num_blocks=2, block_size=2)
    with pytest.raises(SimError, match="does not fit"):
        engine.run(_request(*range(5)))


def test_same_seed_same_events() -> None:
    def run() -> list[model.Event]:
        engine = Engine(num_blocks=6, block_size=2, eviction_jitter=0.3, seed=11)
        return [e for n in range(40) for e in engine.run(_request(*range(n % 5, n % 5 + 6)))]

    assert run() == run()


requests = st.lists(
    st.tuples(
        st.lists(st.integers(0, 3), min_size=0, max_size=12),  # small vocab: shared prefixes
        st.lists(st.integers(0, 3), max_size=4),
        st.sampled_from([None, LORA]),
        st.sampled_from([None, None, "salt"]),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(requests=requests, jitter=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 5))
def test_events_imply_exactly_the_ground_truth(
    requests: list[tuple[list[int], list[int], Adapter | None, str | None]],
    jitter: float,
    seed: int,
) -> None:
    engine = Engine(num_blocks=10, block_size=2, max_running=2, eviction_jitter=jitter, seed=seed)
    replica = EventReplica(2)
    for prompt, output, adapter, salt in requests:
        request = _request(*prompt, output=output, adapter=adapter, salt=salt)
        replica.apply(engine.run(request))
        assert len(replica.blocks) == engine.cached_blocks
        for _, old_output, old_adapter, old_salt in requests:
            context = Context(
                old_adapter.id if old_adapter else None,
                old_adapter.name if old_adapter else None,
                old_salt,
            )
            tokens = prompt + old_output
            assert engine.held_blocks(context, tokens) == replica.matched(context, tokens)


def test_hit_between_misses_splits_the_stored_chain() -> None:
    # Random eviction can take a1 and a3 of the chain a0..a3 and keep a2: storing the chain
    # again must then report two runs, each with its true parent.
    chain = (1, 2, 3, 4, 5, 6, 7, 8)
    for seed in range(500):
        engine = Engine(num_blocks=4, block_size=2, max_running=1, eviction_jitter=1.0, seed=seed)
        stored = engine.run(_request(*chain))[0]
        assert isinstance(stored, model.BlockStored)
        a = stored.block_hashes
        evicted = [e.block_hashes[0] for e in engine.run(_request(9, 9, 9, 9))[:2]]  # type: ignore[union-attr]  # BlockRemoved
        if sorted(evicted, key=a.index) == [a[1], a[3]]:
            break
    else:
        pytest.fail("no seed evicts exactly a1 and a3")
    again = [e for e in engine.run(_request(*chain)) if isinstance(e, model.BlockStored)]
    assert [(e.parent_block_hash, e.block_hashes) for e in again] == [
        (a[0], [a[1]]),
        (a[2], [a[3]]),
    ]
    assert [model.token_list(e) for e in again] == [[3, 4], [7, 8]]
