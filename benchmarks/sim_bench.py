"""How fast the simulated fleet produces and sends events, so benchmarks know its ceiling.

Three measurements, each against a baseline run in the same process, interleaved round by round
(the machine is shared and noisy; medians are compared):

1. engine: ``Engine.run`` over a realistic request stream (blocks stored per CPU second) against
   the hash chain alone (SHA-256 per block: the least any engine that hashes blocks must do);
2. encode: ``eras.encode_batch`` of the engine's batches per era against msgspec's untyped
   encode of the same data as plain lists;
3. wire: ``Publisher.publish`` → a SUB socket on 127.0.0.1, from first publish to last message
   received (wall clock), against encoding the same batches and sending them on a raw socket
   from the caller's thread (the publisher's queue, wake-up pipe and thread are the difference).

    .venv/bin/python benchmarks/sim_bench.py [--requests N] [--rounds R]
"""

import argparse
import hashlib
import json
import statistics
import time
from typing import Any

import msgspec
import zmq

from kvsync import model
from kvsync.events import wire
from kvsync.sim import (
    DEFAULT_ADAPTER,
    Engine,
    Era,
    Mix,
    PromptLibrary,
    Publisher,
    Request,
    Workload,
)
from kvsync.sim import eras as sim_eras

BLOCK = 16


def _requests(count: int) -> list[Request]:
    workload = Workload(PromptLibrary(Mix(), seed=1), seed=2, adapter=DEFAULT_ADAPTER)
    return [workload.next_request() for _ in range(count)]


def _engine_round(requests: list[Request]) -> tuple[float, list[list[model.Event]]]:
    engine = Engine(num_blocks=2048, block_size=BLOCK, eviction_jitter=0.02)
    start = time.process_time()
    batches = [engine.run(request) for request in requests]
    return time.process_time() - start, batches


def _hash_round(requests: list[Request]) -> float:
    start = time.process_time()
    for request in requests:
        parent = b"\x00" * 32
        tokens = request.tokens
        for i in range(len(tokens) // BLOCK):
            block = tokens[i * BLOCK : (i + 1) * BLOCK]
            parent = hashlib.sha256(msgspec.msgpack.encode((parent, block, None))).digest()
    return time.process_time() - start


def _u64(hashes: list[int | bytes]) -> list[int | bytes]:
    return [sim_eras.wire_hash(h, sim_eras.HashFormat.UINT64) for h in hashes]


def _plain(event: model.Event) -> list[Any]:
    """The 0.23 array layout as plain lists: what an untyped encoder would be given."""
    if isinstance(event, model.BlockStored):
        parent = event.parent_block_hash
        return [
            "BlockStored",
            _u64(event.block_hashes),
            None if parent is None else _u64([parent])[0],
            model.token_list(event),
            event.block_size,
            event.lora_id,
            event.medium,
            event.lora_name,
            event.extra_keys,
            0,
            "full_attention",
            None,
        ]
    if isinstance(event, model.BlockRemoved):
        return ["BlockRemoved", _u64(event.block_hashes), "GPU", 0]
    return ["AllBlocksCleared"]


def _encode_round(era: Era, batches: list[list[model.Event]]) -> float:
    start = time.process_time()
    for events in batches:
        sim_eras.encode_batch(era, events, ts=1.0, dp_rank=0, hashes=era.default_hashes)
    return time.process_time() - start


def _plain_round(batches: list[list[model.Event]]) -> float:
    plain = [[1.0, [_plain(e) for e in events], 0] for events in batches]
    start = time.process_time()
    for batch in plain:
        msgspec.msgpack.encode(batch)
    return time.process_time() - start


def _wire_round(
    ctx: zmq.Context[zmq.Socket[bytes]], batches: list[list[model.Event]]
) -> tuple[float, float]:
    with Publisher(ctx=ctx, replay_port=None) as publisher:
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.connect(publisher.pub_address)
        sub.subscribe(b"")
        publisher.wait_for_subscriber()
        start = time.perf_counter()
        for events in batches:
            publisher.publish(events)
        for _ in batches:
            sub.recv_multipart()
        simulated = time.perf_counter() - start
        sub.close(linger=0)
    raw = ctx.socket(zmq.XPUB)
    raw.setsockopt(zmq.SNDHWM, 0)
    port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    sub.subscribe(b"")
    raw.recv()  # the subscription
    start = time.perf_counter()
    for seq, events in enumerate(batches):
        payload = sim_eras.encode_batch(
            Era.V0_33, events, ts=time.time(), dp_rank=0, hashes=sim_eras.HashFormat.UINT64
        )
        raw.send_multipart([b"", wire.encode_seq(seq), payload])
    for _ in batches:
        sub.recv_multipart()
    baseline = time.perf_counter() - start
    sub.close(linger=0)
    raw.close(linger=0)
    return simulated, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    requests = _requests(args.requests)
    engine_s, hash_s, wire_s, raw_s = [], [], [], []
    encode_s: dict[str, list[float]] = {era.value: [] for era in Era}
    plain_s: list[float] = []
    batches: list[list[model.Event]] = []
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    for _ in range(args.rounds):
        elapsed, batches = _engine_round(requests)
        engine_s.append(elapsed)
        hash_s.append(_hash_round(requests))
        for era in Era:
            encode_s[era.value].append(_encode_round(era, batches))
        plain_s.append(_plain_round(batches))
        simulated, baseline = _wire_round(ctx, batches)
        wire_s.append(simulated)
        raw_s.append(baseline)
    ctx.term()
    blocks = sum(
        len(e.block_hashes) for b in batches for e in b if isinstance(e, model.BlockStored)
    )
    events = sum(len(b) for b in batches)
    med = statistics.median
    report = {
        "benchmark": "sim",
        "requests": args.requests,
        "batches": len(batches),
        "events": events,
        "blocks_stored": blocks,
        "rounds": args.rounds,
        "engine": {
            "median_cpu_s": round(med(engine_s), 4),
            "blocks_per_s": round(blocks / med(engine_s)),
            "requests_per_s": round(args.requests / med(engine_s)),
            "baseline_hash_chain_cpu_s": round(med(hash_s), 4),
            "engine_over_hash_chain_time": round(med(engine_s) / med(hash_s), 2),
        },
        "encode": {
            "baseline_untyped_cpu_s": round(med(plain_s), 4),
            **{
                era: {
                    "median_cpu_s": round(med(times), 4),
                    "batches_per_s": round(len(batches) / med(times)),
                    "time_over_untyped": round(med(times) / med(plain_s), 2),
                }
                for era, times in encode_s.items()
            },
        },
        "wire": {
            "publisher_median_s": round(med(wire_s), 4),
            "publisher_batches_per_s": round(len(batches) / med(wire_s)),
            "raw_pub_median_s": round(med(raw_s), 4),
            "raw_batches_per_s": round(len(batches) / med(raw_s)),
            "publisher_over_raw_time": round(med(wire_s) / med(raw_s), 2),
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
