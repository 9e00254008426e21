"""Model-based test: random stores, removals, clears and drops over 3 endpoints and 2 contexts,
every lookup checked against a deliberately naive reference (token prefixes per endpoint)."""

from typing import Any

import xxhash
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import DEFAULT_MEDIUM_WEIGHTS, EndpointContext, Query
from kvsync.model import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EndpointId,
    EngineHash,
    encode_tokens,
)

BS = 2
ENDPOINTS = [EndpointId("ns/pod-0", 0), EndpointId("ns/pod-0", 1), EndpointId("ns/pod-1", 0)]
SEEDS = [7, 7, 9]  # pod-0's ranks hash alike (vLLM >= 0.29); pod-1 has its own seed
ADAPTERS = [None, "sql"]  # the base model and one LoRA adapter
MEDIA = ["GPU", "CPU", None]
GROUPS = [0, 1, None]

Prefix = tuple[int, ...]  # block ids from block 0; block id b is the tokens [b, b + 100]
Held = dict[tuple[str | None, Prefix], set[tuple[str, int]]]  # (adapter, prefix) -> copies

endpoint_ids = st.integers(0, len(ENDPOINTS) - 1)
adapters = st.sampled_from(ADAPTERS)
block_ids = st.lists(st.integers(0, 2), min_size=1, max_size=4)


def tokens(blocks: Prefix) -> list[int]:
    return [t for b in blocks for t in (b, b + 100)]


def engine_hash(endpoint: int, adapter: str | None, prefix: Prefix) -> int:
    return xxhash.xxh3_64_intdigest(repr((adapter, prefix)).encode(), SEEDS[endpoint])


def copy_of(medium: str | None, group: int | None) -> tuple[str, int]:
    return (medium or "GPU", group or 0)


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = PrefixIndex(default_block_size=BS)
        self.held: list[Held] = [{} for _ in ENDPOINTS]

    def apply(self, endpoint: int, event: Any) -> Any:
        return self.index.apply(ENDPOINTS[endpoint], EndpointContext("m"), [event], 0.0)

    @rule(
        endpoint=endpoint_ids,
        adapter=adapters,
        blocks=block_ids,
        parent_pick=st.integers(0, 50),
        unknown_parent=st.booleans(),
        medium=st.sampled_from(MEDIA),
        group=st.sampled_from(GROUPS),
        name_in_extra_keys=st.booleans(),
    )
    def store(
        self,
        *,
        endpoint: int,
        adapter: str | None,
        blocks: list[int],
        parent_pick: int,
        unknown_parent: bool,
        medium: str | None,
        group: int | None,
        name_in_extra_keys: bool,
    ) -> None:
        mine = sorted(p for a, p in self.held[endpoint] if a == adapter)
        parent: Prefix = ()
        parent_hash: int | None = None
        if unknown_parent:
            parent, parent_hash = (9,), 12345  # never stored by anyone
        elif mine and parent_pick % 3:
            parent = mine[parent_pick % len(mine)]
            parent_hash = engine_hash(endpoint, adapter, parent)
        chain = [(*parent, *blocks[: i + 1]) for i in range(len(blocks))]
        hashes: list[EngineHash] = [engine_hash(endpoint, adapter, p) for p in chain]
        extra: list[list[Any] | None] | None = None
        if adapter is not None and name_in_extra_keys:
            extra = [[adapter] for _ in blocks]  # vLLM >= 0.17 publishes the name here too
        event = BlockStored(
            hashes,
            parent_hash,
            encode_tokens(tokens(tuple(blocks))),
            BS,
            lora_name=adapter,
            medium=medium,
            extra_keys=extra,
            group_idx=group,
        )
        outcome = self.apply(endpoint, event)
        if unknown_parent:
            assert outcome.rejected == {"unknown_parent": 1}
            return
        assert not outcome.rejected
        new = 0
        for prefix in chain:
            copies = self.held[endpoint].setdefault((adapter, prefix), set())
            new += not copies
            copies.add(copy_of(medium, group))
        assert outcome.stored_blocks == new

    @rule(
        endpoint=endpoint_ids,
        pick=st.integers(0, 50),
        medium=st.sampled_from(MEDIA),
        group=st.sampled_from(GROUPS),
        count=st.integers(1, 3),
    )
    def remove(
        self, endpoint: int, pick: int, medium: str | None, group: int | None, count: int
    ) -> None:
        mine = sorted(self.held[endpoint], key=repr)
        targets = [mine[(pick + i) % len(mine)] for i in range(count)] if mine else []
        targets = list(dict.fromkeys(targets))
        hashes: list[EngineHash] = [engine_hash(endpoint, a, p) for a, p in targets]
        hashes.append(engine_hash(endpoint, None, (8, 8)))  # a block it never had
        outcome = self.apply(endpoint, BlockRemoved(hashes, medium=medium, group_idx=group))
        gone = 0
        for target in targets:
            copies = self.held[endpoint][target]
            copies.discard(copy_of(medium, group))
            if not copies:
                del self.held[endpoint][target]
                gone += 1
        assert outcome.removed_blocks == gone
        assert outcome.unknown_removed == 1

    @rule(endpoint=endpoint_ids)
    def clear(self, endpoint: int) -> None:
        outcome = self.apply(endpoint, AllBlocksCleared())
        assert outcome.removed_blocks == len(self.held[endpoint])
        self.held[endpoint] = {}

    @rule(endpoint=endpoint_ids)
    def drop(self, endpoint: int) -> None:
        assert self.index.drop_endpoint(ENDPOINTS[endpoint]) == len(self.held[endpoint])
        self.held[endpoint] = {}

    @rule(
        adapter=adapters,
        query=st.lists(st.integers(0, 2), max_size=5),
        tail=st.integers(0, BS - 1),
        pods=st.none() | st.frozensets(st.sampled_from(["ns/pod-0", "ns/pod-1", "ns/x"])),
    )
    def lookup(
        self, adapter: str | None, query: list[int], tail: int, pods: frozenset[str] | None
    ) -> None:
        ids = tokens(tuple(query)) + [7] * tail  # a partial last block is ignored
        result = self.index.match(Query("m", ids, lora_name=adapter, pods=pods), 0.0)
        assert result.query_blocks == len(query)
        got = {
            m.endpoint: (m.matched_blocks, dict(m.by_medium), round(m.score, 9))
            for m in result.matches
        }
        assert got == self.expected(adapter, tuple(query), pods)
        scores = [(-m.score, -m.matched_blocks, m.endpoint) for m in result.matches]
        assert scores == sorted(scores)

    def expected(
        self, adapter: str | None, query: Prefix, pods: frozenset[str] | None
    ) -> dict[EndpointId, tuple[int, dict[str, int], float]]:
        out = {}
        for n, endpoint in enumerate(ENDPOINTS):
            if pods is not None and endpoint.pod not in pods:
                continue
            run, by_medium, score = 0, dict[str, int](), 0.0
            while run < len(query) and (adapter, query[: run + 1]) in self.held[n]:
                media = {m for m, _ in self.held[n][(adapter, query[: run + 1])]}
                for medium in media:
                    by_medium[medium] = by_medium.get(medium, 0) + 1
                score += max(DEFAULT_MEDIUM_WEIGHTS.get(m, 0.5) for m in media)
                run += 1
            if run:
                out[endpoint] = (run, by_medium, round(score, 9))
        return out

    @invariant()
    def blocks_held_agree(self) -> None:
        for n, endpoint in enumerate(ENDPOINTS):
            assert self.index.blocks_held(endpoint) == len(self.held[n])
        distinct = {key for held in self.held for key in held}
        assert self.index.stats().keys == len(distinct)
        assert self.index.stats().entries == sum(len(h) for h in self.held)


IndexMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=25, deadline=None)
TestIndexModel = IndexMachine.TestCase
