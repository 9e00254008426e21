"""Live ingest end to end: N publishers → SubscriberManager over real ZMQ on loopback → index.

Publishers run in a child process (forked before any zmq context exists in this one), so they
do not share this process's GIL: they send pre-encoded vLLM 0.33 frames from simulated engines
(``kvsync.sim``: realistic traffic, ~29 blocks per batch). Each endpoint's stream is a base
stream of engine batches followed by an AllBlocksCleared batch, repeated as often as needed (so
every repetition stores fresh blocks); endpoints share the 4 base streams round-robin.

Measured, for N in (1, 16, 200):
* throughput: the child sends every batch as fast as it can; blocks (stored + removed) applied per
  second between the first and the last applied batch; drops = batches sent - batches applied;
* baseline: the same frames through decode + handler + index in this process, no sockets, no
  threads (the ratio is the price of sockets and the ingest thread);
* lag (N=16): the child paces 25k, 50k and 100k blocks/s and stamps each batch's ts at send;
  p50/p99 of (wall clock when applied - ts), medians over the repeats; a probe process that only
  sleeps 1 ms at a time runs alongside, and its oversleep p99 is the machine's scheduling noise;
* idle CPU (N=200 subscribed, no traffic): process CPU time / wall time over a few seconds.

The machine is shared and noisy: each throughput figure is the median of ``--repeats`` runs, each
baseline run interleaved with its socket run. Prints one JSON document.

    .venv/bin/python benchmarks/ingest_bench.py [--repeats 3] [--quick]
"""

import argparse
import json
import logging
import multiprocessing as mp
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import structlog
import zmq

from kvsync.events import wire
from kvsync.events.decode import decode_live
from kvsync.index.memory.backend import MemoryBackend
from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import EndpointContext
from kvsync.ingest.endpoint import EndpointWriter
from kvsync.ingest.manager import SubscriberManager
from kvsync.ingest.sequencer import EndpointHandler
from kvsync.ingest.values import IngestSettings, Instant
from kvsync.model import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Endpoint,
    EndpointId,
    Event,
)
from kvsync.sim import Engine, Era, Mix, PromptLibrary, Workload
from kvsync.sim.eras import encode_batch

ERA = Era.V0_33
STREAMS = 4
TOPIC = b"kv@bench@model"


@dataclass(frozen=True)
class Stream:
    payloads: list[bytes]  # one cycle, ending with AllBlocksCleared
    blocks: list[int]  # blocks stored + removed, per payload


def make_stream(seed: int, requests: int) -> Stream:
    engine = Engine(num_blocks=4096, block_size=16, seed=seed)
    workload = Workload(PromptLibrary(Mix(), seed), seed=seed)
    payloads, blocks = [], []
    for events in [engine.run(workload.next_request()) for _ in range(requests)] + [
        [AllBlocksCleared()]
    ]:
        if not events:
            continue
        payloads.append(
            encode_batch(ERA, events, ts=time.time(), dp_rank=0, hashes=ERA.default_hashes)
        )
        blocks.append(
            sum(len(e.block_hashes) for e in events if isinstance(e, BlockStored | BlockRemoved))
        )
    return Stream(payloads, blocks)


def plan(streams: Sequence[Stream], publishers: int, total_blocks: int) -> list[list[int]]:
    """Per publisher, the payload positions it sends (cycling its stream) for ~total blocks."""
    per_publisher = total_blocks // publishers
    result = []
    for p in range(publishers):
        stream = streams[p % len(streams)]
        positions, sent, i = [], 0, 0
        while sent < per_publisher:
            positions.append(i % len(stream.payloads))
            sent += stream.blocks[i % len(stream.payloads)]
            i += 1
        result.append(positions)
    return result


def _stamp(payload: bytes, ts: float) -> bytes:
    # [fixarray(3), float64 ts, ...]: overwrite the 8 bytes of ts in place of re-encoding.
    return payload[:2] + struct.pack(">d", ts) + payload[10:]


def child(conn: Connection, streams: list[Stream], publishers: int) -> None:
    """The publisher process: bind, report addresses, wait for subscribers, run commands."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = []
    for _ in range(publishers):
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 1_000_000)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        socks.append((sock, f"tcp://127.0.0.1:{port}"))
    conn.send([address for _, address in socks])
    for sock, _ in socks:
        if not sock.poll(30_000):
            raise TimeoutError("no subscriber")
        sock.recv()
    conn.send("subscribed")
    while True:
        command = conn.recv()
        if command[0] == "stop":
            break
        _, positions, rate = command  # rate: blocks/s, or None for as fast as possible
        sent = _send(socks, streams, positions, rate)
        conn.send(sent)
    for sock, _ in socks:
        sock.close(linger=0)
    ctx.term()


def _send(
    socks: list[tuple[zmq.Socket[bytes], str]],
    streams: list[Stream],
    positions: list[list[int]],
    rate: float | None,
) -> int:
    sent, seqs, blocks_due = 0, [0] * len(socks), 0.0
    started = time.monotonic()
    longest = max(len(p) for p in positions)
    for step in range(longest):
        for p, (sock, _) in enumerate(socks):
            if step >= len(positions[p]):
                continue
            stream = streams[p % len(streams)]
            position = positions[p][step]
            payload = stream.payloads[position]
            if rate is not None:
                blocks_due += stream.blocks[position]
                wait = started + blocks_due / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                payload = _stamp(payload, time.time())
            sock.send_multipart([TOPIC, wire.encode_seq(seqs[p]), payload])
            seqs[p] += 1
            sent += 1
    return sent


def stall_probe(conn: Connection, seconds: float) -> None:
    """A third process that only sleeps 1 ms at a time: how late the OS wakes it up.

    The baseline for lag tails on a shared machine: a stall this process sees is one the ingest
    thread can see too, whatever kvsync does.
    """
    late, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        asked = time.monotonic()
        time.sleep(0.001)
        late.append(time.monotonic() - asked - 0.001)
    late.sort()
    conn.send({
        "oversleep_p50_ms": round(1000 * late[len(late) // 2], 3),
        "oversleep_p99_ms": round(1000 * late[int(len(late) * 0.99)], 3),
        "oversleep_max_ms": round(1000 * late[-1], 3),
    })  # fmt: skip


class Recorder:
    """The manager's lag hook: lag samples and the monotonic times of first and last batch."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.first = self.last = 0.0

    def __call__(self, lag: float) -> None:
        now = time.monotonic()
        if not self.lags:
            self.first = now
        self.last = now
        self.lags.append(lag)


def _subscribe_all(manager: SubscriberManager, addresses: list[str], conn: Connection) -> None:
    """One endpoint per publisher address; returns once the child saw every subscription."""
    for i, address in enumerate(addresses):
        manager.set_endpoint(Endpoint(EndpointId(f"bench/pod-{i}"), "model", address))
    if conn.recv() != "subscribed":
        raise RuntimeError("child did not report subscriptions")


def socket_run(conn: Connection, addresses: list[str], positions: list[list[int]],
               blocks: int, rate: float | None) -> dict[str, Any]:  # fmt: skip
    recorder = Recorder()
    manager = SubscriberManager(
        MemoryBackend(PrefixIndex()), settings=IngestSettings(), on_lag=recorder
    )
    manager.start()
    try:
        _subscribe_all(manager, addresses, conn)
        conn.send(("send", positions, rate))
        sent = conn.recv()
        deadline = time.monotonic() + 120
        applied, last_change = 0, time.monotonic()
        while applied < sent and time.monotonic() < deadline:
            time.sleep(0.01)
            now_applied = manager.snapshot().batches
            if now_applied != applied:
                applied, last_change = now_applied, time.monotonic()
            elif time.monotonic() - last_change > 3.0:
                break  # stalled: whatever is missing was dropped
        stats = manager.snapshot()
    finally:
        manager.stop()
    elapsed = recorder.last - recorder.first
    lags = sorted(recorder.lags)
    result: dict[str, Any] = {
        "batches_sent": sent,
        "batches_applied": stats.batches,
        "drops": sent - stats.batches,
        "gaps": stats.gaps,
        "blocks": blocks,
        "seconds": round(elapsed, 4),
        "blocks_per_s": round(blocks / elapsed) if elapsed > 0 else None,
    }
    if rate is not None:
        result["lag_p50_ms"] = round(1000 * lags[len(lags) // 2], 3)
        result["lag_p99_ms"] = round(1000 * lags[int(len(lags) * 0.99)], 3)
        result["lag_max_ms"] = round(1000 * lags[-1], 3)
    return result


class NullIndex:
    """An index that does nothing: isolates the decoder's and the handler's share."""

    def apply(
        self,
        endpoint: EndpointId,
        context: EndpointContext,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> None:
        return None

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        return 0


def in_process_run(
    streams: Sequence[Stream], positions: list[list[int]], blocks: int, stage: str = "full"
) -> float:
    """The same frames, same interleaving, no sockets or threads; ``stage``: how far they go.

    ``decode`` only decodes; ``handler`` adds the sequence handler with an index that does
    nothing; ``full`` is decode + handler + the real index under its lock (what ingest does).
    """
    backend = MemoryBackend(PrefixIndex())
    handlers = [
        EndpointHandler(
            EndpointId(f"bench/pod-{p}"),
            EndpointContext("model"),
            EndpointWriter(backend) if stage == "full" else NullIndex(),
            has_replay=False,
        )
        for p in range(len(positions))
    ]
    frames = [
        [[TOPIC, wire.encode_seq(s), streams[p % len(streams)].payloads[pos]]
         for s, pos in enumerate(positions[p])]
        for p in range(len(positions))
    ]  # fmt: skip
    longest = max(len(p) for p in positions)
    decode, started = decode_live, time.perf_counter()
    for step in range(longest):
        for p, handler in enumerate(handlers):
            if step < len(frames[p]):
                batch = decode(frames[p][step])
                if stage != "decode":
                    handler.on_live(batch, Instant(time.monotonic(), time.time()))
    return blocks / (time.perf_counter() - started)


def idle_cpu(conn: Connection, addresses: list[str], seconds: float) -> dict[str, Any]:
    manager = SubscriberManager(MemoryBackend(PrefixIndex()))
    manager.start()
    try:
        _subscribe_all(manager, addresses, conn)
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        manager.stop()
    # The same process sleeping with no manager: what "idle" costs without one.
    base0 = time.process_time()
    time.sleep(seconds)
    base = time.process_time() - base0
    return {
        "endpoints": len(addresses),
        "seconds": round(wall, 2),
        "cpu_s": round(cpu, 4),
        "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
        "baseline_cpu_s_without_manager": round(base, 4),
    }


def with_child(streams: list[Stream], publishers: int) -> tuple[BaseProcess, Connection, list[str]]:
    parent_end, child_end = mp.get_context("fork").Pipe()
    process = mp.get_context("fork").Process(
        target=child, args=(child_end, streams, publishers), daemon=False
    )
    process.start()
    addresses = parent_end.recv()
    return process, parent_end, addresses


def finish(process: BaseProcess, conn: Connection) -> None:
    conn.send(("stop",))
    process.join(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    # Keep stdout for the JSON document: the manager's info lines are not what is measured.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    requests = 300 if args.quick else 1200
    total = 150_000 if args.quick else 1_000_000
    lag_seconds = 1.0 if args.quick else 4.0
    streams = [make_stream(seed, requests) for seed in range(STREAMS)]
    out: dict[str, Any] = {
        "benchmark": "ingest",
        "era": ERA.value,
        "blocks_per_batch": round(
            sum(sum(s.blocks) for s in streams) / sum(len(s.blocks) for s in streams), 1
        ),
        "repeats": args.repeats,
        "throughput": {},
    }
    for publishers in (1, 16, 200):
        positions = plan(streams, publishers, total)
        blocks = sum(streams[p % STREAMS].blocks[i] for p, pos in enumerate(positions) for i in pos)
        runs, baselines = [], []
        for _ in range(args.repeats):
            baselines.append(in_process_run(streams, positions, blocks))
            process, conn, addresses = with_child(streams, publishers)
            try:
                runs.append(socket_run(conn, addresses, positions, blocks, None))
            finally:
                finish(process, conn)
        e2e = statistics.median(r["blocks_per_s"] for r in runs)
        base = statistics.median(baselines)
        out["throughput"][str(publishers)] = {
            "blocks": blocks,
            "median_blocks_per_s": round(e2e),
            "median_in_process_blocks_per_s": round(base),
            "ratio_sockets_over_in_process": round(e2e / base, 3),
            "drops": [r["drops"] for r in runs],
            "runs": runs,
        }
    out["lag_16_publishers"] = {}
    for rate in (25_000, 50_000, 100_000):
        positions = plan(streams, 16, int(rate * lag_seconds))
        blocks = sum(streams[p % STREAMS].blocks[i] for p, pos in enumerate(positions) for i in pos)
        runs = []
        for _ in range(args.repeats):
            process, conn, addresses = with_child(streams, 16)
            probe_end, probe_child = mp.get_context("fork").Pipe()
            probe = mp.get_context("fork").Process(
                target=stall_probe, args=(probe_child, lag_seconds + 1.0)
            )
            probe.start()
            try:
                run = socket_run(conn, addresses, positions, blocks, rate)
            finally:
                finish(process, conn)
            run["same_time_stall_probe"] = probe_end.recv()
            probe.join(10)
            runs.append(run)
        out["lag_16_publishers"][f"{rate}_blocks_per_s"] = {
            "median_lag_p50_ms": statistics.median(r["lag_p50_ms"] for r in runs),
            "median_lag_p99_ms": statistics.median(r["lag_p99_ms"] for r in runs),
            "median_probe_oversleep_p99_ms": statistics.median(
                r["same_time_stall_probe"]["oversleep_p99_ms"] for r in runs
            ),
            "drops": [r["drops"] for r in runs],
            "runs": runs,
        }
    positions = plan(streams, 16, total)
    blocks = sum(streams[p % STREAMS].blocks[i] for p, pos in enumerate(positions) for i in pos)
    out["in_process_breakdown_16"] = {
        stage: round(statistics.median(
            in_process_run(streams, positions, blocks, stage) for _ in range(args.repeats)
        ))
        for stage in ("decode", "handler", "full")
    }  # fmt: skip
    process, conn, addresses = with_child(streams, 200)
    try:
        out["idle"] = idle_cpu(conn, addresses, 2.0 if args.quick else 5.0)
    finally:
        finish(process, conn)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
