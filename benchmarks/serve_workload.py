"""The publisher streams and ground truth of ``serve_bench.py``: vLLM 0.33 frames from kvsync.sim.

16 simulated engines (one per publisher, block size 16, 16,384-block pools, LRU eviction) with
plain text traffic (``kvsync.sim`` workloads without salts or adapters: Dynamo folds neither
``cache_salt`` nor LoRA extra keys into its block keys the way kvsync does, so salted traffic
would make the two disagree by design rather than by bug). Engine hashes are the same on every
endpoint (one hash seed, vLLM >= 0.29's default): Dynamo's tree assumes it.

Per endpoint, in send order:
* ``setup``: two of eight shared 8,192-token documents (each document on four endpoints), the
  prompts the latency phases ask about;
* ``bulk``: realistic traffic (new conversations, follow-ups, evictions), with every 100th request
  a re-read of one of the endpoint's documents (a prefix hit: no event, but it keeps them at the
  young end of the LRU, as a popular prompt stays cached in a real pool);
* ``churn``: the background ingest of the latency phases: 16-block chains of fresh tokens, each
  removed again 256 batches later (ring of 512 chains, cycled), so the index size stays flat and
  the documents stay held. The first pass removes nothing until a chain exists to remove.

Markers (one block the same on every endpoint) end a segment; probes (one fresh block on one
endpoint) measure publish -> queryable lag. Ground truth is the engines' own (``Engine``) after
``bulk``: churn, markers and probes use tokens no query contains.
"""

import hashlib
import multiprocessing
import random
import sys
import time
from pathlib import Path

import msgspec

import kvsync.sim
from kvsync import model
from kvsync.sim import (
    Context,
    Engine,
    Era,
    Mix,
    PromptLibrary,
    QuerySampler,
    Request,
    SimQuery,
    Workload,
)
from kvsync.sim.eras import HashFormat, encode_batch

ENDPOINTS = 16
BS = 16
MODEL = "bench"
ERA = Era.V0_33
HASHES = HashFormat.UINT64
POOL_BLOCKS = 16_384
DOCS = 8
DOC_TOKENS = 8192
REFRESH_EVERY = 100
CHURN_BLOCKS = 16
RING = 512
WINDOW = 256
QUERIES_PER_ENDPOINT = 16
PLAIN = Context(None, None, None)
# Token ids of churn, markers and probes start here: far from the simulated vocabulary (32,000),
# so no query of the workload can match them.
FOREIGN_TOKENS = 1 << 20


def pod_name(endpoint: int) -> str:
    return f"pod-{endpoint}"


def documents() -> list[list[int]]:
    rngs = [random.Random(1000 + d) for d in range(DOCS)]
    return [[rng.randrange(32_000) for _ in range(DOC_TOKENS)] for rng in rngs]


def documents_of(endpoint: int) -> tuple[int, int]:
    """Each document on four endpoints: two by ``e % 8``, two by ``(e + 3) % 8``."""
    return endpoint % DOCS, (endpoint + 3) % DOCS


def _payload(events: list[model.Event]) -> bytes:
    return encode_batch(ERA, events, ts=time.time(), dp_rank=0, hashes=HASHES)


def _blocks(events: list[model.Event]) -> int:
    return sum(
        len(e.block_hashes) for e in events if isinstance(e, model.BlockStored | model.BlockRemoved)
    )


def one_block(tokens: list[int], engine_hash: int) -> bytes:
    """A batch storing one root block: a marker or a probe."""
    stored = model.BlockStored(
        block_hashes=[engine_hash],
        parent_block_hash=None,
        token_ids=model.encode_tokens(tokens),
        block_size=BS,
        medium=model.GPU,
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    return _payload([stored])


def foreign_tokens(kind: int, number: int) -> list[int]:
    """16 token ids nobody else publishes: marker (kind 1) or probe (kind 2) ``number``."""
    rng = random.Random(kind << 32 | number)
    return [FOREIGN_TOKENS + rng.randrange(1 << 20) for _ in range(BS)]


def foreign_hash(kind: int, number: int) -> int:
    return (kind << 56) | (number + 1)


class PodStream(msgspec.Struct, array_like=True):
    setup: list[bytes]
    bulk: list[bytes]
    bulk_blocks: int
    churn_first: list[bytes]  # the ring's first pass: no removal before chain WINDOW
    churn_cycle: list[bytes]  # every later pass
    churn_blocks_first: list[int]
    churn_blocks_cycle: list[int]


class Built(msgspec.Struct):
    streams: list[PodStream]
    queries: list[list[int]]  # token ids of the agreement queries
    truth: list[dict[str, int]]  # per query: pod -> matched blocks (only > 0)
    doc_queries: dict[int, list[list[int]]]  # prompt tokens -> the latency phases' prompts


def load_or_build(bulk_blocks: int, cache: Path) -> Built:
    """``build``, cached on disk: the simulation takes a minute or more on a busy machine, and it
    is deterministic, so the key is this file, the simulator's sources and the size."""
    digest = hashlib.sha256(str(bulk_blocks).encode())
    sources = [Path(__file__), *sorted(Path(kvsync.sim.__file__).parent.glob("*.py"))]
    for source in sources:
        digest.update(source.read_bytes())
    path = cache / f"serve-workload-{digest.hexdigest()[:16]}.msgpack"
    if path.exists():
        return msgspec.msgpack.decode(path.read_bytes(), type=Built)
    built = build(bulk_blocks)
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(msgspec.msgpack.encode(built))
    partial.replace(path)  # atomic: a concurrent or interrupted run never reads half a file
    return built


def _churn(endpoint: int) -> tuple[list[bytes], list[bytes], list[int], list[int]]:
    rng = random.Random(5000 + endpoint)
    base = (3 << 56) | (endpoint << 40)
    chains = [[base + k * CHURN_BLOCKS + j for j in range(CHURN_BLOCKS)] for k in range(RING)]
    first, cycle, first_blocks, cycle_blocks = [], [], [], []
    for k in range(RING):
        tokens = [FOREIGN_TOKENS + rng.getrandbits(20) for _ in range(CHURN_BLOCKS * BS)]
        stored = model.BlockStored(
            block_hashes=list(chains[k]),
            parent_block_hash=None,
            token_ids=model.encode_tokens(tokens),
            block_size=BS,
            medium=model.GPU,
            group_idx=0,
            kv_cache_spec_kind="full_attention",
        )
        removed = model.BlockRemoved(list(chains[(k - WINDOW) % RING]), model.GPU, 0)
        with_removal: list[model.Event] = [stored, removed]
        first_events: list[model.Event] = [stored] if k < WINDOW else with_removal
        first.append(_payload(first_events))
        first_blocks.append(_blocks(first_events))
        cycle.append(_payload(with_removal))
        cycle_blocks.append(_blocks(with_removal))
    return first, cycle, first_blocks, cycle_blocks


def _build_endpoint(args: tuple[int, int]) -> tuple[PodStream, Engine, list[Request]]:
    endpoint, bulk_target = args
    docs = documents()
    mine = documents_of(endpoint)
    engine = Engine(num_blocks=POOL_BLOCKS, block_size=BS, seed=endpoint)
    setup = [_payload(engine.run(Request(tuple(docs[d])))) for d in mine]
    library = PromptLibrary(Mix(salt_share=0.0), seed=7)
    workload = Workload(library, seed=100 + endpoint, salts=False)
    bulk: list[bytes] = []
    blocks = 0
    recent: list[Request] = []
    number = 0
    while blocks < bulk_target:
        number += 1
        if number % REFRESH_EVERY == 0:
            request = Request(tuple(docs[mine[(number // REFRESH_EVERY) % 2]]))
        else:
            request = workload.next_request()
            recent = [*recent[-63:], request]
        events = engine.run(request)
        if events:
            bulk.append(_payload(events))
            blocks += _blocks(events)
    first, cycle, first_blocks, cycle_blocks = _churn(endpoint)
    stream = PodStream(setup, bulk, blocks, first, cycle, first_blocks, cycle_blocks)
    return stream, engine, recent


def build(bulk_blocks: int) -> Built:
    """Every endpoint's stream (two worker processes) and the ground truth after ``bulk``."""
    per_endpoint = bulk_blocks // ENDPOINTS
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        built = pool.map(_build_endpoint, [(e, per_endpoint) for e in range(ENDPOINTS)])
    print(f"streams built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    engines = [engine for _, engine, _ in built]
    docs = documents()
    queries: list[SimQuery] = []
    for endpoint, (_, _, recent) in enumerate(built):
        sampler = QuerySampler(
            PromptLibrary(Mix(salt_share=0.0), seed=7), model=MODEL, block_size=BS, seed=endpoint
        )
        queries += [sampler.sample(recent) for _ in range(QUERIES_PER_ENDPOINT)]
    doc_queries = {n: [doc[:n] for doc in docs] for n in (2048, 8192)}
    queries += [SimQuery(MODEL, tuple(p)) for prompts in doc_queries.values() for p in prompts]
    truth = []
    for query in queries:
        # Every block is plain (no adapter, no salt): one context, so ``held_blocks`` answers
        # directly (``matched_blocks`` scans every held block for its contexts first).
        held = {
            pod_name(e): engine.held_blocks(PLAIN, query.token_ids)
            for e, engine in enumerate(engines)
        }
        truth.append({pod: blocks for pod, blocks in held.items() if blocks})
    tokens = [list(q.token_ids) for q in queries]
    return Built([stream for stream, _, _ in built], tokens, truth, doc_queries)
