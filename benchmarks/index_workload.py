"""The deterministic fleet workload of ``index_bench.py``: encoded vLLM 0.33 wire frames.

16 endpoints, block size 16, 64 shared system prompts (8-96 blocks, Zipf 1.1), new
conversations and follow-up turns extending earlier chains on the same endpoint (up to 600
blocks), ~15 % of stored blocks removed again (one BlockRemoved per hash, leaves only, tails of
the oldest conversations first), one AllBlocksCleared half-way; engine hashes are the same on
every endpoint (vLLM >= 0.29 default). Queries: prompts continuing existing conversations.
"""

import random
from bisect import bisect
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import msgspec
import xxhash

ENDPOINTS = 16
BS = 16
MODEL = "llama"
MAX_CONV_BLOCKS = 600


@dataclass
class Workload:
    frames: list[tuple[int, int, bytes]] = field(default_factory=list)  # (endpoint, seq, payload)
    stored_blocks: int = 0
    removed_blocks: int = 0
    live_pairs: int = 0
    queries: dict[str, list[list[int]]] = field(default_factory=dict)


def _engine_hash(endpoint: int, block: int) -> int:
    # The same for every endpoint, as vLLM >= 0.29 publishes by default (fixed NONE_HASH seed);
    # Dynamo's tree needs that. kvsync keeps one map per endpoint regardless.
    del endpoint
    return xxhash.xxh3_64_intdigest(block.to_bytes(8, "little"), 1000)


def build(target_blocks: int, n_queries: int, seed: int = 11) -> Workload:
    """The whole workload, deterministic for a given (target_blocks, n_queries, seed)."""
    rng = random.Random(seed)
    pool = [[rng.randrange(150_000) for _ in range(BS)] for _ in range(4096)]
    tokens: dict[int, list[int]] = {}  # block id -> its 16 token ids
    parent_of: dict[int, int] = {}  # block id -> the block before it (every id has one chain)

    def new_block(tag: int) -> int:
        block = len(tokens)
        tokens[block] = [tag % 150_000, *pool[block % 4096][1:]]
        return block

    prompts = [[new_block(p) for _ in range(rng.randint(8, 96))] for p in range(64)]
    for prompt in prompts:
        parent_of.update(zip(prompt[1:], prompt[:-1], strict=True))
    prompt_weights = list(accumulate(1 / (p + 1) ** 1.1 for p in range(64)))
    convs: list[tuple[int, list[int]]] = []  # (endpoint, chain of block ids)
    live: list[dict[int, None]] = [{} for _ in range(ENDPOINTS)]  # block ids, insertion order
    kids: list[dict[int, int]] = [{} for _ in range(ENDPOINTS)]  # held children per held block
    tails: list[deque[int]] = [deque() for _ in range(ENDPOINTS)]  # conversations by age
    seqs = [0] * ENDPOINTS
    work = Workload()
    cleared = False
    enc = msgspec.msgpack.Encoder()
    while work.stored_blocks < target_blocks:
        if not convs or rng.random() < 0.35:
            endpoint = rng.randrange(ENDPOINTS)
            prompt = prompts[bisect(prompt_weights, rng.random() * prompt_weights[-1])]
            chain = prompt + [new_block(200_000 + len(convs)) for _ in range(rng.randint(2, 32))]
            parent_of.update(zip(chain[len(prompt) :], chain[len(prompt) - 1 :], strict=False))
            convs.append((endpoint, chain))
            conv = len(convs) - 1
        else:  # follow-up: Zipf over conversations, recent ones first
            conv = len(convs) - 1 - min(int(rng.paretovariate(1.2)) - 1, len(convs) - 1)
            endpoint, chain = convs[conv]
            if len(chain) >= MAX_CONV_BLOCKS:
                continue
            first = len(chain)
            chain.extend(new_block(300_000 + conv) for _ in range(rng.randint(1, 32)))
            parent_of.update(zip(chain[first:], chain[first - 1 :], strict=False))
        held = live[endpoint]
        start = 0
        while start < len(chain) and chain[start] in held:
            start += 1
        todo = chain[start:]
        parent = _engine_hash(endpoint, chain[start - 1]) if start else None
        events: list[dict[str, Any]] = [
            {
                "type": "BlockStored",
                "block_hashes": [_engine_hash(endpoint, b) for b in todo],
                "parent_block_hash": parent,
                "token_ids": [t for b in todo for t in tokens[b]],
                "block_size": BS,
                "lora_id": None,
                "medium": "GPU",
                "lora_name": None,
                "extra_keys": [None] * len(todo),
                "group_idx": 0,
                "kv_cache_spec_kind": "full_attention",
            }
        ]
        mykids = kids[endpoint]
        for b in todo:
            held[b] = None
            up = parent_of.get(b)
            if up is not None:
                mykids[up] = mykids.get(up, 0) + 1
        work.stored_blocks += len(todo)
        tails[endpoint].append(conv)
        # evict ~15 % of what is stored: leaves only (tails of this endpoint's oldest
        # conversations first), since Dynamo's tree drops the subtree of an inner removal
        # while kvsync keeps it (the design's §3), and the answers are compared
        budget = round(len(todo) * 0.15 + rng.random() - 0.5)
        while budget > 0 and tails[endpoint]:
            old = convs[tails[endpoint][0]][1]
            victims: list[int] = []
            for b in reversed(old):
                if len(victims) == budget or (b in held and mykids.get(b)):
                    break
                if b in held:
                    victims.append(b)
            if not victims:
                tails[endpoint].popleft()
                continue
            for b in victims:
                del held[b]
                up = parent_of.get(b)
                if up is not None:
                    left = mykids[up] - 1
                    if left:
                        mykids[up] = left
                    else:
                        del mykids[up]
                events.append(
                    {"type": "BlockRemoved", "block_hashes": [_engine_hash(endpoint, b)],
                     "medium": "GPU", "group_idx": 0}
                )  # fmt: skip
            budget -= len(victims)
            work.removed_blocks += len(victims)
            tails[endpoint].rotate(-1)
        if not cleared and work.stored_blocks >= target_blocks // 2:
            events.append({"type": "AllBlocksCleared"})
            held.clear()
            mykids.clear()
            tails[endpoint].clear()
            cleared = True
        payload = enc.encode([1_800_000_000.0 + len(work.frames), events, 0])
        work.frames.append((endpoint, seqs[endpoint], payload))
        seqs[endpoint] += 1
    work.live_pairs = sum(len(h) for h in live)
    longest = sorted(range(len(convs)), key=lambda c: -len(convs[c][1]))
    for size in (2048, 8192):
        queries = []
        for i in range(n_queries):
            conv = (
                longest[i % max(1, len(longest) // 10)]
                if size > 2048
                else rng.randrange(len(convs))
            )
            ids = [t for b in convs[conv][1] for t in tokens[b]][:size]
            while len(ids) < size:
                ids.extend(pool[rng.randrange(4096)])
            queries.append(ids[:size])
        work.queries[str(size)] = queries
    return work
