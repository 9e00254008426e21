"""The soak benchmark's fleet processes: recorded engine traffic replayed through sim publishers.

``Fleet.step`` generates about 12k blocks/s per core live (token generation, the engine and
the per-event encoding all run in Python), far from the soak's 100k blocks/s on a shared 2-core
machine. So each endpoint *slot* records one cycle of its engine's traffic ahead of time
(``kvsync.sim`` ``Engine`` + ``Workload``, events pre-encoded with ``eras.raw_event``) and the
fleet replays those frames, paced by blocks (stored + removed, as ``ingest_bench`` counts
them), through the simulator's ``Publisher``s: the
real wire format, vLLM's replay protocol and the simulator's fault knobs (``drop_next``,
``restart``) are all the simulator's own. A cycle ends with ``AllBlocksCleared``, so the next
cycle starts from the same empty cache the recording started from, and every position in the
stream has a known engine state.

Ground truth: each recording keeps a copy of its engine at a *checkpoint* (the middle of the
cycle, cache full) and the requests just before it. To quiesce, every endpoint is fast-forwarded
to its checkpoint and stops there, so the truth is that copy's ``matched_blocks``.

Churn, applied on command (the target is drawn from this process's seeded generator):
``gap`` (the next 1-5 batches are not sent live, still replayable), ``clear`` (the cycle's
``AllBlocksCleared`` now, then the cycle from the start), ``restart`` (every rank of a pod:
``Publisher.restart``, seq back to 0, replay buffer emptied, the cycle from the start) and
``replace`` (a pod is removed and a new one, with a new name and new ports, takes its slots).

Runs as a ``multiprocessing`` child (``worker``); commands and replies are tuples on a Pipe.
"""

import copy
import random
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgspec
import zmq

from kvsync.model import AllBlocksCleared, BlockRemoved, BlockStored, EndpointId
from kvsync.sim import (
    DEFAULT_ADAPTER,
    Engine,
    Era,
    Mix,
    PromptLibrary,
    Publisher,
    QuerySampler,
    Request,
    SimQuery,
    Workload,
    eras,
    ports,
)

MODEL = "soak-model"
ERAS = (Era.V0_33, Era.V0_25, Era.V0_17)  # cycled over the pods: three wire layouts at once
LIBRARY_SEED = 7  # every process shares the system prompts: pods in both hold the same prefixes
RECENT = 64  # requests before the checkpoint that queries are sampled from, per slot


@dataclass(frozen=True)
class FleetConfig:
    worker: int
    pods: int  # in this process
    dp_sizes: tuple[int, ...]
    blocks_per_s: float  # blocks (stored + removed) per second of this process
    cycle_blocks: int  # stored blocks per slot and cycle
    num_blocks: int
    block_size: int
    requests_per_batch: int  # requests per published batch (one scheduler step)
    seed: int


@dataclass
class Recording:
    era: Era
    batches: list[list[msgspec.Raw]]  # one cycle; the last is [AllBlocksCleared]
    blocks: list[int]  # blocks stored + removed per batch: the pacing cost
    stored: list[int]  # blocks stored per batch
    checkpoint: int  # the truth is the engine after batches[:checkpoint]
    truth: Engine
    recent: list[Request]


def record(slot: int, era: Era, config: FleetConfig, library: PromptLibrary) -> Recording:
    engine = Engine(
        num_blocks=config.num_blocks,
        block_size=config.block_size,
        hash_seed=f"soak-{config.worker}-{slot}",
        eviction_jitter=0.02,
        seed=config.seed * 1000 + slot,
    )
    workload = Workload(
        library, seed=config.seed * 1000 + 500 + slot, adapter=DEFAULT_ADAPTER, salts=True
    )
    hashes = era.default_hashes
    batches: list[list[msgspec.Raw]] = []
    costs: list[int] = []
    stored: list[int] = []
    recent: deque[Request] = deque(maxlen=RECENT)
    total = 0
    checkpoint: tuple[int, Engine, list[Request]] | None = None
    while total < config.cycle_blocks:
        events = []
        for _ in range(config.requests_per_batch):
            request = workload.next_request()
            recent.append(request)
            events.extend(engine.run(request))
        if not events:
            continue
        blocks = sum(len(e.block_hashes) for e in events if isinstance(e, BlockStored))
        removed = sum(len(e.block_hashes) for e in events if isinstance(e, BlockRemoved))
        batches.append([eras.raw_event(era, e, hashes) for e in events])
        costs.append(blocks + removed)
        stored.append(blocks)
        total += blocks
        if checkpoint is None and total >= config.cycle_blocks // 2:
            checkpoint = (len(batches), copy.deepcopy(engine), list(recent))
    assert checkpoint is not None
    batches.append([eras.raw_event(era, AllBlocksCleared(), hashes)])
    costs.append(0)
    stored.append(0)
    at, truth, before = checkpoint
    return Recording(era, batches, costs, stored, at, truth, before)


@dataclass
class Slot:
    recording: Recording
    position: int = 0


@dataclass
class Pod:
    name: str
    slots: list[int]  # rank r replays slots[r]
    publishers: list[Publisher]


class SoakFleet:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed * 7 + config.worker)
        self._port_rng = random.Random()  # ports must not repeat between runs or processes
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._library = PromptLibrary(Mix(), LIBRARY_SEED)
        self._sampler = QuerySampler(
            self._library, model=MODEL, block_size=config.block_size, seed=config.seed
        )
        self.slots: list[Slot] = []
        self.pods: list[Pod] = []
        self._names = 0
        for index in range(config.pods):
            era = ERAS[index % len(ERAS)]
            ranks = config.dp_sizes[index % len(config.dp_sizes)]
            numbers = []
            for _ in range(ranks):
                numbers.append(len(self.slots))
                self.slots.append(Slot(record(len(self.slots), era, config, self._library)))
            self.pods.append(self._bind(numbers))
        self.sent_blocks = 0  # stored + removed
        self.sent_stored = 0
        self.sent_batches = 0
        self._turn = 0

    def _bind(self, slots: list[int]) -> Pod:
        name = f"soak/w{self.config.worker}-vllm-{self._names}"
        self._names += 1
        era = self.slots[slots[0]].recording.era

        def make(rank: int, port: int, replay_port: int | None) -> Publisher:
            return Publisher(
                era=era,
                dp_rank=rank,
                pub_port=port,
                replay_port=replay_port,
                block_size=self.config.block_size,
                ctx=self._ctx,
            )

        publishers = ports.bind_pod(
            make, dp_size=len(slots), base=None, replay=True, rng=self._port_rng
        )
        for number in slots:
            self.slots[number].position = 0
        return Pod(name, slots, publishers)

    # --- what the daemon is told ---------------------------------------------------------------
    def endpoints_document(self) -> list[dict[str, Any]]:
        """The ``--endpoints-file`` entries of this process's pods (rank r on base port + r)."""
        document = []
        for pod in self.pods:
            entry: dict[str, Any] = {
                "name": pod.name,
                "model": MODEL,
                "pub": pod.publishers[0].pub_address,
                "replay": pod.publishers[0].replay_address,
            }
            if len(pod.publishers) > 1:
                entry["dp_size"] = len(pod.publishers)
            document.append(entry)
        return document

    def _endpoints(self) -> list[tuple[EndpointId, Publisher, Slot]]:
        return [
            (EndpointId(pod.name, rank), publisher, self.slots[pod.slots[rank]])
            for pod in self.pods
            for rank, publisher in enumerate(pod.publishers)
        ]

    def wait_for_subscribers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for pod in self.pods:
            for publisher in pod.publishers:
                publisher.wait_for_subscriber(max(0.0, deadline - time.monotonic()))

    # --- traffic -------------------------------------------------------------------------------
    def send_next(self) -> int:
        """Publish the next batch of the next endpoint (round robin); its blocks."""
        endpoints = self._endpoints()
        _, publisher, slot = endpoints[self._turn % len(endpoints)]
        self._turn += 1
        return self._send(publisher, slot)

    def _send(self, publisher: Publisher, slot: Slot) -> int:
        recording = slot.recording
        publisher.publish(recording.batches[slot.position])
        blocks = recording.blocks[slot.position]
        self.sent_stored += recording.stored[slot.position]
        slot.position = (slot.position + 1) % len(recording.batches)
        self.sent_blocks += blocks
        self.sent_batches += 1
        return blocks

    def churn(self, op: str) -> dict[str, Any]:
        endpoints = self._endpoints()
        if op == "gap":
            endpoint, publisher, _ = self._rng.choice(endpoints)
            count = self._rng.randint(1, 5)
            publisher.drop_next(count)  # replayable: the daemon can fill it
            return {"op": op, "target": f"{endpoint.pod}#{endpoint.dp_rank}", "batches": count}
        if op == "clear":
            endpoint, publisher, slot = self._rng.choice(endpoints)
            slot.position = len(slot.recording.batches) - 1  # the cycle's AllBlocksCleared
            self._send(publisher, slot)
            return {"op": op, "target": f"{endpoint.pod}#{endpoint.dp_rank}"}
        pod = self._rng.choice(self.pods)
        if op == "restart":
            for publisher, number in zip(pod.publishers, pod.slots, strict=True):
                publisher.restart()
                self.slots[number].position = 0
            return {"op": op, "target": pod.name}
        if op == "replace":
            for publisher in pod.publishers:
                publisher.close()
            new = self._bind(pod.slots)
            self.pods[self.pods.index(pod)] = new
            return {"op": op, "target": pod.name, "new": new.name}
        raise ValueError(f"unknown churn op {op!r}")

    # --- quiesce and ground truth ----------------------------------------------------------------
    def quiesce(self, timeout: float) -> dict[str, int]:
        """Every endpoint fast-forwarded to its checkpoint, flushed; {"pod#rank": last seq}."""
        endpoints = self._endpoints()
        for _, publisher, _ in endpoints:
            publisher.drop_next(0)  # a pending drop would leave a gap no later batch reveals
        for _, publisher, slot in endpoints:
            # At least one batch after the cancelled drops, so a gap they left is seen live.
            self._send(publisher, slot)
            while slot.position != slot.recording.checkpoint:
                self._send(publisher, slot)
        deadline = time.monotonic() + timeout
        last = {}
        for endpoint, publisher, _ in endpoints:
            publisher.flush(max(0.0, deadline - time.monotonic()))
            last[f"{endpoint.pod}#{endpoint.dp_rank}"] = publisher.stats.next_seq - 1
        return last

    def queries(self, count: int) -> list[SimQuery]:
        recent = [r for slot in self.slots for r in slot.recording.recent]
        return [self._sampler.sample(recent) for _ in range(count)]

    def truth(self, queries: list[SimQuery]) -> list[dict[str, int]]:
        """Per query, {"pod#rank": matched blocks > 0}; valid once quiesced (at checkpoints)."""
        endpoints = self._endpoints()
        answers = []
        for query in queries:
            held = {}
            for endpoint, _, slot in endpoints:
                blocks = slot.recording.truth.matched_blocks(query)
                if blocks:
                    held[f"{endpoint.pod}#{endpoint.dp_rank}"] = blocks
            answers.append(held)
        return answers

    def close(self) -> None:
        for pod in self.pods:
            for publisher in pod.publishers:
                publisher.close()
        self._ctx.term()


def worker(conn: Connection, config: FleetConfig) -> None:
    """The process: record, bind, then pace batches between commands until ("stop",)."""
    started = time.monotonic()
    fleet = SoakFleet(config)
    conn.send(("ready", fleet.endpoints_document(), round(time.monotonic() - started, 1)))
    running = False
    due = time.monotonic()
    cpu_started = time.process_time()
    try:
        while True:
            if running:
                now = time.monotonic()
                due = max(due, now - 1.0)  # after a stall resume the rate, owe at most 1 s
                while due <= now:
                    due += fleet.send_next() / config.blocks_per_s
            timeout = max(0.0, due - time.monotonic()) if running else None
            if not conn.poll(timeout):
                continue
            command, *args = conn.recv()
            reply: Any = None
            if command == "subscribed":
                fleet.wait_for_subscribers(float(args[0]))
            elif command == "start":
                running, due = True, time.monotonic()
            elif command == "churn":
                reply = fleet.churn(str(args[0]))
                if reply["op"] == "replace":
                    reply["endpoints"] = fleet.endpoints_document()
            elif command == "stats":
                cpu = time.process_time() - cpu_started
                reply = {"sent_blocks": fleet.sent_blocks, "sent_stored": fleet.sent_stored,
                         "sent_batches": fleet.sent_batches,
                         "cpu_s": cpu}  # fmt: skip
            elif command == "quiesce":
                running = False
                reply = fleet.quiesce(float(args[0]))
            elif command == "queries":
                reply = fleet.queries(int(args[0]))
            elif command == "truth":
                reply = fleet.truth(list(args[0]))
            elif command == "stop":
                conn.send(None)
                return
            conn.send(reply)
    finally:
        fleet.close()
