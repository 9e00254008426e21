"""The Redis backend against the memory backend, same workload, same run.

Starts its own Redis Cluster (scripts/redis-cluster.sh: 3 masters + 3 replicas on loopback) and
feeds ``index_workload`` (the index benchmark's deterministic fleet: encoded vLLM 0.33 frames,
16 endpoints, ~15 % of stored blocks removed again) through the decoder into each backend:

* ingest: one writer, (stored + removed) blocks per second of wall time until Redis holds every
  change (``flush``); the writer's CPU and the masters' (``INFO cpu``) per million blocks;
* memory in Redis: ``used_memory`` delta over the masters per live (block, endpoint) pair;
* lookups: 8k-token queries (``match``, in process: what the HTTP layer adds is api_bench's),
  p50/p99 wall, answers compared with the memory backend's;
* restart: a new writer claims every endpoint and reads its blocks back (``resume``);
* 128 endpoints: the workload at 1/8 of the blocks written to 8 groups of 16 endpoints (the same
  pair count), lookups again.

    .venv/bin/python benchmarks/redis_bench.py --quick          # 100k blocks, seconds
    .venv/bin/python benchmarks/redis_bench.py                  # 1M blocks: the targets' size
"""

import argparse
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from index_workload import ENDPOINTS, MODEL, Workload, build

from kvsync.events.decode import decode_payload
from kvsync.index.backend import BackendSettings, IndexBackend, RedisSettings, open_backend
from kvsync.index.values import EndpointContext, Query
from kvsync.model import EndpointId

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "redis-cluster.sh"
CTX = EndpointContext(MODEL)


def _masters(url: str) -> list[redis.Redis]:
    with redis.Redis.from_url(url) as seed:
        text = seed.execute_command("CLUSTER", "NODES", NEVER_DECODE=True).decode()
    masters = []
    for line in text.splitlines():
        fields = line.split()
        if "master" in fields[2] and len(fields) > 8:
            host, port = fields[1].split("@")[0].rsplit(":", 1)
            masters.append(redis.Redis(host=host, port=int(port)))
    return masters


def _memory(masters: list[redis.Redis]) -> int:
    return sum(int(m.info("memory")["used_memory"]) for m in masters)


def _server_cpu(masters: list[redis.Redis]) -> float:
    total = 0.0
    for m in masters:
        info = m.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def _ingest(backend: IndexBackend, work: Workload, ids: list[EndpointId]) -> None:
    seqs: dict[EndpointId, int] = {}
    for e, seq, payload in work.frames:
        endpoint = ids[e]
        seqs[endpoint] = seq
        backend.apply(endpoint, CTX, decode_payload(seq, payload).events, 0.0, seq)


def _lookups(backend: IndexBackend, queries: list[list[int]]) -> tuple[dict[str, float], list[Any]]:
    times, answers = [], []
    for q in queries:
        started = time.perf_counter()
        result = backend.match(Query(MODEL, q), 0.0)
        times.append((time.perf_counter() - started) * 1000)
        answers.append(sorted((m.endpoint, m.matched_blocks) for m in result.matches))
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 3),
        "p99_ms": round(_percentile(times, 0.99), 3),
        "mean_answers": round(statistics.mean(len(a) for a in answers), 1),
    }, answers


def _timed(run: Callable[[], None]) -> tuple[float, float]:
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu0, time.perf_counter() - wall0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="100k blocks, 100 queries")
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.queries = 100_000, 100
    run_dir = Path(tempfile.mkdtemp(prefix="kvsync-redis-bench-"))
    url = subprocess.run(
        [str(SCRIPT), "start", str(run_dir)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        print(json.dumps(_bench(url, args.blocks, args.queries), indent=2))
    finally:
        subprocess.run([str(SCRIPT), "stop", str(run_dir)], check=False, capture_output=True)


def _bench(url: str, blocks: int, n_queries: int) -> dict[str, Any]:
    work = build(blocks, n_queries)
    moved = work.stored_blocks + work.removed_blocks
    ids = [EndpointId(f"bench/pod-{e}") for e in range(ENDPOINTS)]
    settings = BackendSettings(redis=RedisSettings(url=url))
    out: dict[str, Any] = {
        "benchmark": "redis_backend",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "workload": {
            "stored_blocks": work.stored_blocks,
            "removed_blocks": work.removed_blocks,
            "live_pairs": work.live_pairs,
            "endpoints": ENDPOINTS,
            "frames": len(work.frames),
        },
    }
    memory = open_backend("memory", settings)
    cpu, wall = _timed(lambda: _ingest(memory, work, ids))
    out["memory"] = {"ingest_blocks_per_s": round(moved / wall), "ingest_cpu_s": round(cpu, 3)}
    lookups, truth = _lookups(memory, work.queries["8192"])
    out["memory"]["lookup_8k"] = lookups

    masters = _masters(url)
    used0, server0 = _memory(masters), _server_cpu(masters)
    backend = open_backend("redis", settings)
    for endpoint in ids:
        backend.resume(endpoint, "bench")

    def ingest_and_flush() -> None:
        _ingest(backend, work, ids)
        assert backend.flush(timeout_s=600)

    cpu, wall = _timed(ingest_and_flush)
    used, server = _memory(masters) - used0, _server_cpu(masters) - server0
    out["redis"] = {
        "ingest_blocks_per_s": round(moved / wall),
        "ingest_wall_s": round(wall, 3),
        "writer_cpu_s_per_million_blocks": round(cpu / moved * 1e6, 3),
        "redis_cpu_s_per_million_blocks": round(server / moved * 1e6, 3),
        "bytes_per_pair": round(used / max(1, work.live_pairs), 1),
    }
    reader = open_backend("redis", settings)
    lookups, answers = _lookups(reader, work.queries["8192"])
    out["redis"]["lookup_8k_16_endpoints"] = lookups
    out["redis"]["answers_equal_memory"] = answers == truth

    # A writer that stops cleanly releases its endpoints (lookups skip them until resumed): the
    # restarted one takes them over, as a daemon restarted with the same shard would.
    assert backend.close(timeout_s=600)
    restarted = open_backend("redis", settings)
    started = time.perf_counter()
    resumed = [restarted.resume(endpoint, "bench") for endpoint in ids]
    out["redis"]["restart_catch_up_s"] = round(time.perf_counter() - started, 3)
    out["redis"]["restart_blocks_read_back"] = sum(restarted.blocks_held(e) for e in ids)
    out["redis"]["restart_resumed_endpoints"] = sum(r is not None for r in resumed)
    restarted.close()

    # 128 endpoints holding the same number of pairs: 8 groups of 16, 1/8 of the blocks each.
    for m in masters:
        m.flushall()
    small = build(blocks // 8, n_queries)
    wide = open_backend("redis", settings)
    for group in range(8):
        group_ids = [EndpointId(f"bench/g{group}-pod-{e}") for e in range(ENDPOINTS)]
        _ingest(wide, small, group_ids)
    assert wide.flush(timeout_s=600)
    lookups, _ = _lookups(reader, small.queries["8192"])
    assert wide.close(timeout_s=600)
    out["redis"]["lookup_8k_128_endpoints"] = lookups
    out["redis"]["pairs_128_endpoints"] = small.live_pairs * 8
    reader.close()
    for m in masters:
        m.close()
    out["ratios"] = {
        "ingest_redis_over_memory": round(
            out["redis"]["ingest_blocks_per_s"] / out["memory"]["ingest_blocks_per_s"], 3
        ),
        "lookup_8k_p50_redis_over_memory": round(
            out["redis"]["lookup_8k_16_endpoints"]["p50_ms"] / out["memory"]["lookup_8k"]["p50_ms"],
            2,
        ),
    }
    out["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


if __name__ == "__main__":
    main()
