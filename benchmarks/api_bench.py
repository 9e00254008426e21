"""POST /v1/match latency at fixed request rates, with and without heavy ingest in the same run.

Three processes on the same (2-core, shared) machine:

* the daemon: ``kvsync serve`` with static endpoints, exactly as deployed;
* a feeder (``--feeder``, started by this script): P publishers speaking vLLM 0.33's wire format.
  It first stores 8k-token prompts (512 blocks of 16) on the pods, then, while a phase asks for
  it, publishes churn at ``--ingest-blocks-per-s`` blocks stored per second (64-block chains,
  each removed again 512 batches later, so the index stays at a steady size);
* the load generator (this process): open-loop requests at a fixed rate over 8 keep-alive
  connections, pre-encoded 8k-token bodies whose prompts the pods hold (fully or half), so every
  lookup walks 256-512 blocks. Latency is measured from each send; ``p99_from_schedule_ms`` is
  measured from the scheduled send time, so a server that falls behind (every connection busy)
  is also charged for the queueing it causes. The client wakes with epoll's 1 ms resolution.

For each rate the run alternates a baseline phase (no ingest) and an ingest phase, and reports
p50/p99 and achieved rps for both, their ratios, and the ingest rate the daemon actually applied
(from ``kvsync_blocks_applied_total``). Prints one JSON document.

    .venv/bin/python benchmarks/api_bench.py [--rates 100,500,1000] [--seconds 6]
        [--ingest-blocks-per-s 200000] [--pods 4]
"""

import argparse
import json
import multiprocessing
import os
import random
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections import deque
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, cast

import zmq

from kvsync import model
from kvsync.sim.eras import Era, HashFormat, encode_batch

BLOCK = 16
PROMPT_BLOCKS = 512  # 8,192 tokens
CHURN_BLOCKS = 64
RING = 1024  # churn chains per pod; chain k is removed when chain k + WINDOW is stored
WINDOW = 512
PROMPTS_PER_POD = 8
MODEL = "bench"
CONNECTIONS = 8


def _stored(
    hashes: list[model.EngineHash], parent: model.EngineHash | None, tokens: list[int]
) -> model.BlockStored:
    return model.BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=model.encode_tokens(tokens),
        block_size=BLOCK,
        medium=model.GPU,
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )


def prompts(pods: int) -> list[list[int]]:
    rng = random.Random(11)
    return [[rng.randrange(32_000) for _ in range(PROMPT_BLOCKS * BLOCK)] for _ in range(pods * 4)]


def _payload(events: list[model.Event]) -> bytes:
    return encode_batch(Era.V0_33, events, ts=time.time(), dp_rank=0, hashes=HashFormat.UINT64)


def _pod_batches(pod: int, pods: int) -> tuple[list[bytes], list[bytes]]:
    """(prompt batches, churn ring batches) of one pod; hashes unique within the pod."""
    rng = random.Random(pod)
    fresh = iter(rng.sample(range(1, 1 << 62), PROMPT_BLOCKS * PROMPTS_PER_POD + RING * 64))
    setup = []
    for number, tokens in enumerate(prompts(pods)):
        owner, half = number % pods, (number + 1) % pods
        blocks = PROMPT_BLOCKS if owner == pod else PROMPT_BLOCKS // 2 if half == pod else 0
        parent = None
        for first in range(0, blocks, 64):
            hashes: list[model.EngineHash] = [next(fresh) for _ in range(64)]
            chunk = tokens[first * BLOCK : (first + 64) * BLOCK]
            setup.append(_payload([_stored(hashes, parent, chunk)]))
            parent = hashes[-1]
    chains: list[list[model.EngineHash]] = [
        [next(fresh) for _ in range(CHURN_BLOCKS)] for _ in range(RING)
    ]
    churn = []
    for k in range(RING):
        tokens = [rng.getrandbits(15) for _ in range(CHURN_BLOCKS * BLOCK)]  # distinct keys
        events: list[model.Event] = [_stored(chains[k], None, tokens)]
        events.append(model.BlockRemoved(block_hashes=chains[(k - WINDOW) % RING], medium="GPU"))
        churn.append(_payload(events))
    return setup, churn


def feed(
    ports: list[int], blocks_per_s: int, *, ingest_on: Event, stop: Event, ready: Event,
    sent_blocks: "Synchronized[int]",
) -> None:  # fmt: skip
    """The feeder process: publish the prompts, then churn while ``ingest_on`` is set."""
    ctx = zmq.Context()
    socks, batches = [], []
    for pod, port in enumerate(ports):
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 1_000_000)
        sock.bind(f"tcp://127.0.0.1:{port}")
        socks.append(sock)
        batches.append(_pod_batches(pod, len(ports)))
    for sock in socks:  # the subscription frame: the daemon is connected
        sock.recv()
    seqs = [0] * len(socks)

    def send(pod: int, payload: bytes) -> None:
        socks[pod].send_multipart([b"", seqs[pod].to_bytes(8, "big"), payload])
        seqs[pod] += 1

    for pod, (setup, _) in enumerate(batches):
        for payload in setup:
            send(pod, payload)
    ready.set()
    per_batch = CHURN_BLOCKS
    interval = per_batch / blocks_per_s
    position = [0] * len(socks)
    due = time.monotonic()
    while not stop.is_set():
        if not ingest_on.wait(0.05):
            due = time.monotonic()
            continue
        now = time.monotonic()
        while due <= now:
            pod = int(due / interval) % len(socks)
            send(pod, batches[pod][1][position[pod] % RING])
            position[pod] += 1
            with sent_blocks.get_lock():
                sent_blocks.value += per_batch
            due += interval
        time.sleep(max(0.0, min(0.001, due - time.monotonic())))
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_request(path: str, body: bytes | None) -> bytes:
    """One keep-alive HTTP/1.1 request: a GET, or a JSON POST of ``body``."""
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def response_length(buffer: bytes) -> int:
    """Length of the first complete response in ``buffer``, or 0."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return 0
    length = 0
    for line in buffer[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    total = end + 4 + length
    return total if len(buffer) >= total else 0


def load(port: int, requests: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop load at ``rate``; latency from each request's scheduled time."""
    selector = selectors.DefaultSelector()
    free: deque[socket.socket] = deque()
    for _ in range(CONNECTIONS):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        free.append(conn)
    buffers: dict[socket.socket, bytes] = {}
    scheduled: dict[socket.socket, tuple[float, float]] = {}  # (scheduled, sent)
    latencies: list[float] = []  # from the send
    queued: list[float] = []  # from the scheduled time: includes waiting for a free connection
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    end = start + seconds
    due = start
    sent = 0
    while True:
        now = time.perf_counter()
        while free and due <= now and due < end:
            conn = free.popleft()
            scheduled[conn], buffers[conn] = (due, time.perf_counter()), b""
            conn.sendall(requests[sent % len(requests)])
            selector.register(conn, selectors.EVENT_READ)
            sent += 1
            due = start + sent / rate
        if not scheduled and due >= end:
            break
        wait = None if not free or due >= end else max(0.0, due - time.perf_counter())
        for key, _ in selector.select(wait):
            answered = cast(socket.socket, key.fileobj)
            buffers[answered] += answered.recv(65536)
            if response_length(buffers[answered]):
                finished = time.perf_counter()
                status = int(buffers[answered][9:12])
                statuses[status] = statuses.get(status, 0) + 1
                due_at, sent_at = scheduled.pop(answered)
                latencies.append(finished - sent_at)
                queued.append(finished - due_at)
                selector.unregister(answered)
                free.append(answered)
    elapsed = time.perf_counter() - start
    for conn in free:
        conn.close()
    latencies.sort()
    queued.sort()
    return {
        "rate": rate,
        "requests": len(latencies),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3),
        "max_ms": round(1000 * latencies[-1], 3),
        "p99_from_schedule_ms": round(1000 * queued[int(0.99 * (len(queued) - 1))], 3),
        "statuses": statuses,
    }


def _applied_blocks(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith('kvsync_blocks_applied_total{type="stored"}'):
            return float(line.split()[-1])
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drain(port: int, sent_blocks: "Synchronized[int]", setup_blocks: int) -> float:
    """Wait until the daemon applied every block sent (a backlog must not leak into the next
    phase); returns how long that took."""
    started = time.monotonic()
    while _applied_blocks(port) < setup_blocks + sent_blocks.value:
        assert time.monotonic() - started < 300, "daemon did not catch up with the feeder"
        time.sleep(0.1)
    return round(time.monotonic() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="100,500,1000")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--ingest-blocks-per-s", type=int, default=200_000)
    parser.add_argument("--pods", type=int, default=4)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    ports = [_free_port() for _ in range(args.pods)]
    http_port = _free_port()
    spawn = multiprocessing.get_context("spawn")
    ingest_on, stop, ready = spawn.Event(), spawn.Event(), spawn.Event()
    sent_blocks: Synchronized[int] = spawn.Value("q", 0)
    feeder = spawn.Process(
        target=feed,
        args=(ports, args.ingest_blocks_per_s),
        kwargs={"ingest_on": ingest_on, "stop": stop, "ready": ready, "sent_blocks": sent_blocks},
    )
    feeder.start()
    endpoints = [
        f"--endpoint=name=bench-{i},model={MODEL},pub=tcp://127.0.0.1:{port}"
        for i, port in enumerate(ports)
    ]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "kvsync", "serve", "--http-host", "127.0.0.1",
         "--http-port", str(http_port), "--log-level", "warning", "--drain-seconds", "0",
         *endpoints],
    )  # fmt: skip
    try:
        assert ready.wait(120), "feeder did not get subscribers"
        bodies = [json.dumps({"model": MODEL, "token_ids": p}).encode() for p in prompts(args.pods)]
        requests = [http_request("/v1/match", body) for body in bodies]
        deadline = time.monotonic() + 60
        expected = sum(PROMPT_BLOCKS for _ in bodies) + sum(PROMPT_BLOCKS // 2 for _ in bodies)
        while _applied_blocks(http_port) < expected:
            assert time.monotonic() < deadline, "daemon did not apply the prompts"
            time.sleep(0.1)
        load(http_port, requests, 200, 2.0)  # warm-up
        phases = []
        for rate in rates:
            for ingest in (False, True):
                if ingest:
                    ingest_on.set()
                    time.sleep(1.0)  # let ingest reach its rate before measuring
                applied_before, sent_before = _applied_blocks(http_port), sent_blocks.value
                cpu_before = _cpu_seconds(daemon.pid)
                started = time.monotonic()
                result = load(http_port, requests, rate, args.seconds)
                took = time.monotonic() - started
                cpu = _cpu_seconds(daemon.pid) - cpu_before
                result["daemon_cpu_percent"] = round(100 * cpu / took, 1)
                if not ingest:  # all of the daemon's work is lookups
                    result["daemon_cpu_ms_per_request"] = round(1000 * cpu / result["requests"], 3)
                result["ingest"] = ingest
                result["ingest_sent_blocks_per_s"] = round((sent_blocks.value - sent_before) / took)
                result["ingest_applied_blocks_per_s"] = round(
                    (_applied_blocks(http_port) - applied_before) / took
                )
                ingest_on.clear()
                result["ingest_backlog_drain_s"] = _drain(http_port, sent_blocks, expected)
                phases.append(result)
        ratios = {}
        for rate in rates:
            base, busy = (p for p in phases if p["rate"] == rate)
            ratios[str(int(rate))] = {
                "p50_ingest_over_baseline": round(busy["p50_ms"] / base["p50_ms"], 2),
                "p99_ingest_over_baseline": round(busy["p99_ms"] / base["p99_ms"], 2),
            }
        print(
            json.dumps(
                {
                    "benchmark": "api",
                    "prompt_tokens": PROMPT_BLOCKS * BLOCK,
                    "pods": args.pods,
                    "connections": CONNECTIONS,
                    "seconds_per_phase": args.seconds,
                    "ingest_target_blocks_per_s": args.ingest_blocks_per_s,
                    "phases": phases,
                    "ratios": ratios,
                },
                indent=2,
            )
        )
    finally:
        stop.set()
        daemon.terminate()
        daemon.wait(30)
        feeder.join(10)


if __name__ == "__main__":
    main()
