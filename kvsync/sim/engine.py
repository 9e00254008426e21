"""A simulated vLLM engine: a prefix-cached block pool and the KV events it implies. Pure.

Deterministic given its arguments (``seed`` drives the only random choice). Not thread-safe: one
caller at a time (``kvsync.sim.fleet`` holds a lock). Raises ``SimError`` for a request longer
than the pool.

What it reproduces of vLLM's block pool (``vllm/v1/core/block_pool.py``):
- A request's full blocks get chained hashes ``H(parent, tokens, extra keys)``: the extra keys of
  every block of a LoRA request are ``[lora_name]``, a ``cache_salt`` is appended to block 0's.
  Only full blocks are cached; the partial tail block is allocated but never stored.
- Cached blocks are reused (prefix hits); a running request pins its blocks. Finished requests free
  their blocks tail first, into an LRU queue; a new block evicts the head of that queue when the
  pool has no never-used block left (``BlockRemoved``, one hash per event, like the GPU pool).
- ``eviction_jitter`` is the share of evictions that take a random free block instead of the LRU
  head, so an inner block can go while its children stay cached (vLLM does this under sliding
  windows and preemption; kvsync must keep the children and reconnect them later).
- Each run of newly cached blocks is one ``BlockStored`` whose parent is the block before it.
- ``clear()`` is a successful prefix-cache reset (``AllBlocksCleared``); ``restart()`` forgets
  everything silently, as a new process does.

Ground truth (``held_blocks``) is computed from the token prefixes of the cached blocks, never from
the engine hashes or extra keys (``kvsync.sim.groundtruth``), so it is independent of how anyone
indexes the events.
"""

import hashlib
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, NamedTuple

import msgspec

from kvsync import model
from kvsync.sim.groundtruth import Context, context_of, prefix_digests, selects
from kvsync.sim.records import Adapter, Request, SimError, SimQuery

FULL_ATTENTION: Final = "full_attention"
_ENCODE: Final = msgspec.msgpack.Encoder().encode


@dataclass(slots=True)
class _Block:
    digest: bytes
    prefix: bytes  # digest of every token from the root through this block: the ground truth
    context: Context
    ref_count: int = 0


@dataclass(slots=True)
class _Running:
    blocks: list[_Block] = field(default_factory=list)
    partial: int = 0  # 1 if the request also holds an uncached partial block


class Engine:
    """One engine (one DP rank) with a pool of ``num_blocks`` blocks of ``block_size`` tokens."""

    def __init__(
        self,
        *,
        num_blocks: int,
        block_size: int = 16,
        hash_seed: str = "vllm-none-hash",
        max_running: int = 4,
        eviction_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        if num_blocks < 1 or block_size < 1 or max_running < 1:
            raise SimError("num_blocks, block_size and max_running must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_running = max_running
        self.eviction_jitter = eviction_jitter
        self._none_hash = hashlib.sha256(hash_seed.encode()).digest()
        self._rng = random.Random(seed)  # noqa: S311  # a simulation, not cryptography
        self._cached: dict[bytes, _Block] = {}
        self._free: OrderedDict[bytes, _Block] = OrderedDict()  # LRU: head is evicted first
        self._never_used = num_blocks  # blocks holding no cached data (fresh or partial)
        self._running: deque[_Running] = deque()
        self._held: set[tuple[Context, bytes]] = set()
        # What vLLM counts and reports per request (vllm:prefix_cache_queries/hits, in tokens;
        # usage.prompt_tokens_details.cached_tokens): see ``run``.
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.last_cached_tokens = 0

    # --- queries -------------------------------------------------------------------------------
    @property
    def cached_blocks(self) -> int:
        """Blocks whose content is cached (in use or free): what the engine has published."""
        return len(self._cached)

    @property
    def running_requests(self) -> int:
        """Requests holding blocks (vLLM's running batch; the simulator has no waiting queue)."""
        return len(self._running)

    @property
    def kv_cache_usage(self) -> float:
        """Share of the pool pinned by running requests (vLLM: 1 - free blocks / all blocks;
        cached blocks no request holds are free, they can be evicted)."""
        return 1.0 - self._free_capacity() / self.num_blocks

    def contexts(self) -> set[Context]:
        return {context for context, _ in self._held}

    def matched_blocks(self, query: SimQuery) -> int:
        """Leading full blocks of the query this pool holds, under the contexts it selects.

        The adapter matches when every field the query gives (``lora_name``, ``lora_id``) is
        the block's; a query with neither selects blocks without adapter. The salt must be equal.
        """
        return max(
            (self.held_blocks(c, query.token_ids) for c in self.contexts() if selects(query, c)),
            default=0,
        )

    def held_blocks(self, context: Context, token_ids: tuple[int, ...] | list[int]) -> int:
        """Leading full blocks of ``token_ids`` (under ``context``) that this pool holds."""
        count = 0
        for prefix in prefix_digests(token_ids, self.block_size):
            if (context, prefix) not in self._held:
                break
            count += 1
        return count

    # --- commands ------------------------------------------------------------------------------
    def run(self, request: Request) -> list[model.Event]:
        """Schedule ``request`` (prefill, then its generated tokens); return its events in order."""
        tokens = request.tokens
        needed = -(-len(tokens) // self.block_size)
        if needed > self.num_blocks:
            raise SimError(f"request of {needed} blocks does not fit a pool of {self.num_blocks}")
        while self._running and self._free_capacity() < needed:
            self._finish_oldest()
        events: list[model.Event] = []
        running = _Running()
        context = context_of(request.adapter, request.cache_salt)
        self._count_prefix_hit(context, request)
        digests = self._chain(tokens, request.adapter, request.cache_salt)
        prefixes = prefix_digests(tokens, self.block_size)
        prompt_full = len(request.prompt) // self.block_size
        for start, stop in ((0, prompt_full), (prompt_full, len(digests))):
            segment = _Segment(start, stop, digests, prefixes)
            self._cache_segment(segment, context, request, running, events)
        if len(tokens) % self.block_size:
            self._allocate(events)
            running.partial = 1
        self._running.append(running)
        while len(self._running) > self.max_running:
            self._finish_oldest()
        return events

    def _count_prefix_hit(self, context: Context, request: Request) -> None:
        # vLLM reuses the leading cached blocks of the prompt, but at most prompt length - 1
        # tokens: the last prompt token is always computed again, for its logits.
        reusable = (len(request.prompt) - 1) // self.block_size if request.prompt else 0
        held = self.held_blocks(context, request.prompt[: reusable * self.block_size])
        self.last_cached_tokens = held * self.block_size
        self.prefix_queries += len(request.prompt)
        self.prefix_hits += self.last_cached_tokens

    def clear(self) -> list[model.Event]:
        """Reset the prefix cache (vLLM does it only with nothing running): ``AllBlocksCleared``."""
        self._forget()
        return [model.AllBlocksCleared()]

    def restart(self) -> None:
        """A new engine process: the cache is gone and nothing is published about it."""
        self._forget()
        self.prefix_queries = self.prefix_hits = 0  # a new process starts its counters at 0

    # --- internals -----------------------------------------------------------------------------
    def _chain(
        self, tokens: tuple[int, ...], adapter: Adapter | None, salt: str | None
    ) -> list[bytes]:
        digests: list[bytes] = []
        parent = self._none_hash
        for i in range(len(tokens) // self.block_size):
            block = tokens[i * self.block_size : (i + 1) * self.block_size]
            extra = _extra_keys(i, adapter, salt)
            parent = hashlib.sha256(_ENCODE((parent, block, extra))).digest()
            digests.append(parent)
        return digests

    def _cache_segment(
        self,
        segment: "_Segment",
        context: Context,
        request: Request,
        running: _Running,
        events: list[model.Event],
    ) -> None:
        digests = segment.digests
        # Pin every hit first so that allocating the misses can never evict them.
        hits = {
            i: self._cached[digests[i]]
            for i in range(segment.start, segment.stop)
            if digests[i] in self._cached
        }
        for hit in hits.values():
            self._pin(hit)
        run: list[int] = []
        for i in range(segment.start, segment.stop):
            block = hits.get(i)
            if block is None:
                self._allocate(events)
                block = _Block(digests[i], segment.prefixes[i], context, ref_count=1)
                self._cached[block.digest] = block
                self._held.add((context, block.prefix))
                run.append(i)
            else:
                self._store(run, digests, request, events)  # a hit ends a run of new blocks
            running.blocks.append(block)
        self._store(run, digests, request, events)

    def _store(
        self, run: list[int], digests: list[bytes], request: Request, events: list[model.Event]
    ) -> None:
        if not run:
            return
        first, size = run[0], self.block_size
        tokens = request.tokens
        adapter = request.adapter
        events.append(
            model.BlockStored(
                block_hashes=[digests[i] for i in run],
                parent_block_hash=digests[first - 1] if first else None,
                token_ids=model.encode_tokens(tokens[first * size : (run[-1] + 1) * size]),
                block_size=size,
                lora_id=adapter.id if adapter else None,
                medium=model.GPU,
                lora_name=adapter.name if adapter else None,
                extra_keys=[_extra_keys(i, adapter, request.cache_salt) for i in run],
                group_idx=0,
                kv_cache_spec_kind=FULL_ATTENTION,
            )
        )
        run.clear()

    def _pin(self, block: _Block) -> None:
        if block.ref_count == 0:
            del self._free[block.digest]
        block.ref_count += 1

    def _free_capacity(self) -> int:
        return self._never_used + len(self._free)

    def _allocate(self, events: list[model.Event]) -> None:
        if self._never_used:
            self._never_used -= 1
            return
        if not self._free:
            raise SimError("block pool exhausted by running requests")
        if self.eviction_jitter and self._rng.random() < self.eviction_jitter:
            digest = self._rng.choice(list(self._free))
            victim = self._free.pop(digest)
        else:
            _, victim = self._free.popitem(last=False)
        del self._cached[victim.digest]
        self._held.discard((victim.context, victim.prefix))
        events.append(model.BlockRemoved([victim.digest], model.GPU, 0))

    def _finish_oldest(self) -> None:
        done = self._running.popleft()
        self._never_used += done.partial
        for block in reversed(done.blocks):  # tail first: vLLM evicts a request's tail first
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.digest] = block

    def _forget(self) -> None:
        self._running.clear()
        self._cached.clear()
        self._free.clear()
        self._held.clear()
        self._never_used = self.num_blocks


class _Segment(NamedTuple):
    """Blocks ``start``..``stop`` of a request: the prompt's full blocks, or the generated ones."""

    start: int
    stop: int
    digests: list[bytes]
    prefixes: list[bytes]


def _extra_keys(index: int, adapter: Adapter | None, salt: str | None) -> list[str] | None:
    """vLLM's per-block extra keys: the LoRA name on every block, then the salt on block 0."""
    keys = [adapter.name] if adapter else []
    if salt is not None and index == 0:
        keys.append(salt)
    return keys or None
