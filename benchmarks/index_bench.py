"""Prefix-index benchmark: kvsync's decoder + PrefixIndex against a naive baseline and, when
installed, NVIDIA Dynamo's Rust radix tree, on the same deterministic fleet workload.

Workload: ``index_workload.py`` (seeded, identical in every variant; encoded vLLM 0.33 map-era
frames). Queries: 2k- and 8k-token prompts continuing existing conversations.

Each variant runs in its own subprocess (clean RSS): ingest CPU time, then the queries one by one.
Bytes per (block, endpoint) = RSS growth over the ingest / live (block, endpoint) pairs.

    .venv/bin/python benchmarks/index_bench.py --quick           # 100k blocks, seconds
    .venv/bin/python benchmarks/index_bench.py --blocks 1000000  # the targets are for 1M
    .venv/bin/python benchmarks/index_bench.py --blocks 3000000
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import msgspec
import xxhash
from index_workload import BS, ENDPOINTS, MODEL, Workload, build

from kvsync.events.decode import decode_payload
from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import EndpointContext, Query
from kvsync.model import EndpointId


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Naive:
    """The baseline: dicts of sets, untyped decode, per-block bytes + seeded xxh3."""

    def __init__(self) -> None:
        self.holders: dict[int, set[str]] = {}
        self.engine: dict[str, dict[int, int]] = {}

    def ingest(self, endpoint: str, payload: bytes) -> None:
        _, events, _ = msgspec.msgpack.decode(payload)
        mine = self.engine.setdefault(endpoint, {})
        for ev in events:
            kind = ev["type"]
            if kind == "BlockStored":
                parent = ev["parent_block_hash"]
                key = 0 if parent is None else mine.get(parent)
                if key is None:
                    continue
                ids = ev["token_ids"]
                for i, h in enumerate(ev["block_hashes"]):
                    data = array("I", ids[i * BS : (i + 1) * BS]).tobytes()
                    key = xxhash.xxh3_64_intdigest(data, key)
                    mine[h] = key
                    self.holders.setdefault(key, set()).add(endpoint)
            elif kind == "BlockRemoved":
                for h in ev["block_hashes"]:
                    key = mine.pop(h, None)
                    if key is not None:
                        self.holders[key].discard(endpoint)
                        if not self.holders[key]:
                            del self.holders[key]
            else:
                for key in mine.values():
                    self.holders[key].discard(endpoint)
                    if not self.holders[key]:
                        del self.holders[key]
                mine.clear()

    def match(self, ids: list[int]) -> dict[str, int]:
        key, depth, runs = 0, 0, {}
        alive: set[str] | None = None
        for i in range(len(ids) // BS):
            key = xxhash.xxh3_64_intdigest(array("I", ids[i * BS : (i + 1) * BS]).tobytes(), key)
            here = self.holders.get(key, set())
            now = here if alive is None else alive & here
            for gone in (alive or set()) - now:
                runs[gone] = depth
            alive = now
            if not alive:
                break
            depth += 1
        for endpoint in alive or ():
            runs[endpoint] = depth
        return {e: d for e, d in runs.items() if d}


def run_variant(variant: str, work: Workload) -> dict[str, Any]:
    names = [f"bench/pod-{e}" for e in range(ENDPOINTS)]
    gc.collect()
    rss0 = _rss_bytes()
    if variant == "kvsync":
        index = PrefixIndex()
        ctx = EndpointContext(MODEL)
        ids = [EndpointId(n) for n in names]

        def ingest() -> None:
            for e, seq, payload in work.frames:
                index.apply(ids[e], ctx, decode_payload(seq, payload).events, 0.0)

        def match(q: list[int]) -> dict[int, int]:
            r = index.match(Query(MODEL, q), 0.0)
            return {int(m.endpoint.pod.rsplit("-", 1)[1]): m.matched_blocks for m in r.matches}
    elif variant == "naive":
        naive = Naive()

        def ingest() -> None:
            for e, _, payload in work.frames:
                naive.ingest(names[e], payload)

        def match(q: list[int]) -> dict[int, int]:
            return {int(n.rsplit("-", 1)[1]): d for n, d in naive.match(q).items()}
    else:
        from dynamo.llm import RadixTree, compute_block_hash_for_seq

        tree = RadixTree()
        jenc = msgspec.json.encode

        def ingest() -> None:
            event_id = 0
            for e, _, payload in work.frames:
                for ev in msgspec.msgpack.decode(payload)[1]:
                    event_id += 1
                    if ev["type"] == "BlockStored":
                        local = compute_block_hash_for_seq(ev["token_ids"], BS)
                        blocks = [
                            {"block_hash": h, "tokens_hash": t}
                            for h, t in zip(ev["block_hashes"], local, strict=True)
                        ]
                        data: Any = {
                            "stored": {"parent_hash": ev["parent_block_hash"], "blocks": blocks}
                        }
                    elif ev["type"] == "BlockRemoved":
                        data = {"removed": {"block_hashes": ev["block_hashes"]}}
                    else:
                        data = "cleared"
                    tree.apply_event(e, jenc({"event_id": event_id, "data": data}))

        def match(q: list[int]) -> dict[int, int]:
            # the stub says worker id keys; 1.6.1 returns (worker_id, dp_rank) tuples
            scores: Any = tree.find_matches(compute_block_hash_for_seq(q, BS)).scores
            return {int(k[0]): int(d) for k, d in scores.items() if d}

    cpu0, wall0 = time.process_time(), time.perf_counter()
    ingest()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    gc.collect()
    grown = _rss_bytes() - rss0
    out: dict[str, Any] = {
        "ingest_cpu_s": round(cpu, 3),
        "ingest_wall_s": round(wall, 3),
        "ingest_blocks_per_s": round(work.stored_blocks / cpu),
        "rss_growth_mb": round(grown / 2**20, 1),
        "bytes_per_block_endpoint": round(grown / max(1, work.live_pairs), 1),
        "answers": {},
    }
    for size, queries in work.queries.items():
        cpu_times, wall_times, answers = [], [], []
        for q in queries:
            c0, w0 = time.process_time_ns(), time.perf_counter_ns()
            answer = match(q)
            cpu_times.append((time.process_time_ns() - c0) / 1000)
            wall_times.append((time.perf_counter_ns() - w0) / 1000)
            answers.append(sorted(answer.items()))
        cpu_times.sort()
        out[f"query_{size}_median_us"] = round(statistics.median(cpu_times), 1)
        out[f"query_{size}_p99_us"] = round(cpu_times[int(len(cpu_times) * 0.99) - 1], 1)
        out[f"query_{size}_wall_median_us"] = round(statistics.median(wall_times), 1)
        out[f"query_{size}_best_run_blocks_mean"] = round(
            statistics.mean(max((d for _, d in a), default=0) for a in answers), 1
        )
        out["answers"][size] = answers
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="variants alternate; medians")
    parser.add_argument("--quick", action="store_true", help="100k blocks, 200 queries, 1 round")
    parser.add_argument("--variant", choices=["kvsync", "naive", "dynamo"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.queries, args.rounds = 100_000, 200, 1
    if args.variant:  # child process: one variant, JSON on stdout
        # One core per child: Dynamo's binding hands every call to a second thread, and across
        # two cores each handoff is a futex wake-up whose cost depends on what the other core
        # is doing (measured 5-12x apart idle vs loaded); on one core it is stable. kvsync and
        # the naive baseline are single-threaded either way.
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        # The workload comes from the parent's file and stays alive, so the RSS growth over
        # the ingest is the variant's structures alone (no freed build garbage to reuse).
        raw = msgspec.msgpack.decode(Path(args.workload).read_bytes())
        work = Workload(
            [tuple(f) for f in raw["frames"]], raw["stored"], raw["removed"], raw["live"],
            raw["queries"],
        )  # fmt: skip
        del raw
        print(json.dumps(run_variant(args.variant, work)))
        return
    work = build(args.blocks, args.queries)
    variants = ["kvsync", "naive"]
    try:
        import dynamo.llm  # noqa: F401

        variants.append("dynamo")
    except ImportError:
        pass
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.NamedTemporaryFile(suffix=".msgpack") as f:
        f.write(msgspec.msgpack.encode({
            "frames": work.frames, "stored": work.stored_blocks, "removed": work.removed_blocks,
            "live": work.live_pairs, "queries": work.queries,
        }))  # fmt: skip
        f.flush()
        # Variants alternate round by round, so a burst of load on the shared machine hits
        # them alike; every figure is the median over the rounds.
        for _ in range(args.rounds):
            for variant in variants:
                cmd = [sys.executable, __file__, "--variant", variant, "--workload", f.name]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = {}
    for variant, rounds in runs.items():
        merged: dict[str, Any] = {
            k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "answers"
        }
        merged["answers"] = rounds[0]["answers"]
        merged["answers_stable"] = all(r["answers"] == rounds[0]["answers"] for r in rounds)
        results[variant] = merged
    mine = results["kvsync"]
    report: dict[str, Any] = {
        "benchmark": "index",
        "workload": {
            "frames": len(work.frames),
            "stored_blocks": work.stored_blocks,
            "removed_blocks": work.removed_blocks,
            "live_block_endpoint_pairs": work.live_pairs,
            "queries_per_size": args.queries,
            "rounds": args.rounds,
        },
    }
    for result in results.values():
        result["same_answers_as_kvsync"] = result["answers"] == mine["answers"]
    for variant, result in results.items():
        report[variant] = {k: v for k, v in result.items() if k != "answers"}
    for other in variants[1:]:
        theirs = results[other]
        report[f"kvsync_over_{other}"] = {
            "ingest_speed": round(mine["ingest_blocks_per_s"] / theirs["ingest_blocks_per_s"], 2),
            "query_2048_median": round(
                mine["query_2048_median_us"] / theirs["query_2048_median_us"], 2
            ),
            "query_8192_median": round(
                mine["query_8192_median_us"] / theirs["query_8192_median_us"], 2
            ),
            "memory": round(
                mine["bytes_per_block_endpoint"] / max(1.0, theirs["bytes_per_block_endpoint"]), 2
            ),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
