"""A simulated vLLM fleet on loopback: pods × DP ranks, traffic, and the ground truth. I/O edge.

    with Fleet(pods=3, dp_sizes=(1, 2), seed=7) as fleet:   # publishers bound, threads running
        daemon_endpoints = fleet.endpoints()                 # kvsync.model.Endpoint per DP rank
        fleet.wait_for_subscribers()                         # after the daemon subscribed (XPUB)
        fleet.step(100)                                      # 100 requests, deterministic
        fleet.flush()                                        # every batch is on the wire
        query = fleet.sample_query()
        truth = fleet.ground_truth(query)                    # {EndpointId: matched_blocks > 0}

Each endpoint (``EndpointId(pod, dp_rank)``) is an ``Engine`` + ``Workload`` + ``Publisher``.
Pod ``i`` is named ``{name_prefix}{i}`` ("sim/vllm-0", …). Ports follow vLLM's DP rule, rank r on
base + r for both sockets: the live ports are ``base .. base+dp-1``, the replay ports
``base+10 .. base+10+dp-1``; with ``base_port`` pod i uses ``base = base_port + 20*i``, without
it each pod picks a random free base (retrying if taken).

With ``engine_http=True`` each pod also runs its engine's HTTP server
(``kvsync.sim.engine_http.EngineHttpServer``: vLLM's ``/tokenize`` over ``fleet.tokenizer``, a
BPE trained on the fly) and its endpoints carry that address (``Endpoint.engine``);
``fleet.engine_server(pod)`` gives it, to add routes or break it in a test. It also serves
``GET /metrics``: vLLM's Prometheus text rendered from the pod's engines' own state
(``kvsync.sim.engine_metrics``; vLLM 0.10's names for the 0.10.1 era, else those of >= 0.11).
``route(endpoint, query)`` runs a router's query as a request there and returns the
``cached_tokens`` the engine reports; ``run_unpublished`` runs requests whose events are lost.

Threads: the caller's (``step``, ``submit``, ``clear``, ``restart``), each publisher's own, and
with ``start()`` one traffic thread that calls ``step`` at a rate. One lock serialises engine
state, so ``ground_truth`` may be called at any time; it is exact once the fleet is quiescent
(no traffic thread) and the daemon has caught up. Raises ``SimError`` (and its subclasses).
"""

import dataclasses
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import zmq
from prometheus_client import CONTENT_TYPE_LATEST

from kvsync.model import BlockStored, EndpointId, Event
from kvsync.model import Endpoint as DaemonEndpoint
from kvsync.sim import ports
from kvsync.sim.engine import Engine
from kvsync.sim.engine_http import EngineHttpServer, EngineReply, EngineRequest
from kvsync.sim.engine_metrics import EngineMetrics, MetricNames
from kvsync.sim.eras import Era
from kvsync.sim.publisher import Publisher
from kvsync.sim.records import Adapter, Request, SimError, SimQuery
from kvsync.sim.tokenizer import SimTokenizer
from kvsync.sim.traffic import Traffic
from kvsync.sim.workload import Mix, PromptLibrary, QuerySampler, Workload

DEFAULT_ADAPTER = Adapter(1, "sql-adapter")


@dataclass(frozen=True, slots=True)
class SimEndpoint:
    """One DP rank of one pod: its engine, its traffic and its publisher."""

    id: EndpointId
    engine: Engine
    workload: Workload
    publisher: Publisher


class Fleet:
    """N simulated vLLM pods serving one model (and one LoRA adapter) on 127.0.0.1."""

    def __init__(
        self,
        *,
        pods: int = 3,
        dp_sizes: Sequence[int] = (1, 2),
        model: str = "sim-model",
        adapter: Adapter | None = DEFAULT_ADAPTER,
        eras: Sequence[Era | str] = (Era.V0_33,),
        hashes: str | None = None,
        block_size: int = 16,
        num_blocks: int = 1024,
        max_running: int = 4,
        eviction_jitter: float = 0.02,
        mix: Mix | None = None,
        seed: int = 0,
        replay: bool = True,
        replay_capacity: int = 10_000,
        base_port: int | None = None,
        topic: str = "",
        xpub: bool = True,
        name_prefix: str = "sim/vllm-",
        recent_requests: int = 512,
        engine_http: bool = False,
    ) -> None:
        """``dp_sizes`` and ``eras`` cycle over the pods; ``topic`` may use {pod} and {model}."""
        self.model = model
        self.block_size = block_size
        self._engine_options = (num_blocks, max_running, eviction_jitter)
        self._seed = seed
        self._adapter = adapter
        mix = mix or Mix()
        # Every request must fit an engine's pool (vLLM caps it with max_model_len).
        mix = dataclasses.replace(mix, max_tokens=min(mix.max_tokens, num_blocks * block_size))
        self._library = PromptLibrary(mix, seed)
        self._sampler = QuerySampler(self._library, model=model, block_size=block_size, seed=seed)
        self._rng = random.Random(seed)  # noqa: S311  # a simulation, not cryptography
        # Ports come from their own unseeded generator: a retry after a taken port must not shift
        # the traffic sequence, and two processes with the same seed must not pick the same ports.
        self._port_rng = random.Random()  # noqa: S311
        self._lock = threading.Lock()
        self._recent: deque[Request] = deque(maxlen=recent_requests)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._endpoints: dict[EndpointId, SimEndpoint] = {}
        self._daemon_endpoints: list[DaemonEndpoint] = []
        self._traffic: Traffic | None = None
        self._engine_servers: dict[str, EngineHttpServer] = {}
        self._metrics: dict[str, EngineMetrics] = {}
        self.tokenizer = SimTokenizer.trained(seed) if engine_http else None
        try:
            for index in range(pods):
                pod = f"{name_prefix}{index}"
                if self.tokenizer is not None:
                    self._engine_servers[pod] = EngineHttpServer(
                        model=model,
                        tokenizer=self.tokenizer,
                        adapters=() if adapter is None else (adapter.name,),
                        max_model_len=num_blocks * block_size,
                    )
                era = Era(eras[index % len(eras)])
                pod_topic = topic.format(pod=pod, model=model)

                def make(rank: int, port: int, replay_port: int | None) -> Publisher:
                    return Publisher(
                        era=era,  # noqa: B023  # called at once, inside this iteration
                        hashes=hashes,
                        topic=pod_topic,  # noqa: B023
                        dp_rank=rank,
                        pub_port=port,
                        replay_port=replay_port,
                        xpub=xpub,
                        replay_capacity=replay_capacity,
                        block_size=block_size,
                        ctx=self._ctx,
                    )

                publishers = ports.bind_pod(
                    make,
                    dp_size=dp_sizes[index % len(dp_sizes)],
                    base=None if base_port is None else base_port + ports.POD_PORT_STRIDE * index,
                    replay=replay,
                    rng=self._port_rng,
                )
                for rank, publisher in enumerate(publishers):
                    self._add(EndpointId(pod, rank), publisher, salts=era is not Era.V0_10_1)
                server = self._engine_servers.get(pod)
                if server is not None:
                    self._serve_metrics(pod, server, "both" if era is Era.V0_10_1 else "current")
        except BaseException:
            self.close()
            raise

    # --- wiring --------------------------------------------------------------------------------

    def _add(self, endpoint_id: EndpointId, publisher: Publisher, *, salts: bool) -> None:
        # Salted requests only where the era publishes extra keys (vLLM >= 0.17): before that a
        # salted block looks unsalted on the wire, and no subscriber could tell.
        num_blocks, max_running, eviction_jitter = self._engine_options
        pod, rank, seed = endpoint_id.pod, endpoint_id.dp_rank, self._seed
        number = len(self._endpoints)
        engine = Engine(
            num_blocks=num_blocks,
            block_size=self.block_size,
            hash_seed=f"{pod}#{rank}",  # hashes differ per endpoint, as in vLLM 0.10.2-0.28
            max_running=max_running,
            eviction_jitter=eviction_jitter,
            seed=seed * 1000 + number,
        )
        workload = Workload(
            self._library, seed=seed * 1000 + number, adapter=self._adapter, salts=salts
        )
        self._endpoints[endpoint_id] = SimEndpoint(endpoint_id, engine, workload, publisher)
        server = self._engine_servers.get(pod)
        self._daemon_endpoints.append(
            DaemonEndpoint(
                id=endpoint_id,
                model=self.model,
                pub=publisher.pub_address,
                replay=publisher.replay_address,
                topic=publisher.topic,
                engine=None if server is None else server.url,
            )
        )

    def _serve_metrics(self, pod: str, server: EngineHttpServer, names: MetricNames) -> None:
        def engines() -> dict[int, Engine]:
            return {i.dp_rank: sim.engine for i, sim in self._endpoints.items() if i.pod == pod}

        metrics = EngineMetrics(
            model=self.model, engines=engines, names=names, lock=self._lock,
            max_model_len=server.max_model_len,
        )  # fmt: skip
        self._metrics[pod] = metrics

        def answer(_request: EngineRequest) -> EngineReply:
            return EngineReply(200, metrics.render(), CONTENT_TYPE_LATEST)

        server.add_route("GET", "/metrics", answer)

    # --- what the daemon needs -----------------------------------------------------------------
    @property
    def ids(self) -> list[EndpointId]:
        return list(self._endpoints)

    def endpoints(self) -> list[DaemonEndpoint]:
        """One ``kvsync.model.Endpoint`` per DP rank, to hand to the daemon."""
        return list(self._daemon_endpoints)

    def endpoint_specs(self) -> list[str]:
        """The same as ``kvsync serve --endpoint`` specs (one per pod, ``dp_size`` when > 1)."""
        return ports.endpoint_specs(self._daemon_endpoints)

    def engine_server(self, pod: str) -> EngineHttpServer:
        """The engine HTTP server of ``pod`` (``engine_http=True`` only)."""
        server = self._engine_servers.get(pod)
        if server is None:
            raise SimError(f"no engine HTTP server for {pod!r} (Fleet(engine_http=True))")
        return server

    def publisher(self, endpoint: EndpointId) -> Publisher:
        return self._endpoints[endpoint].publisher

    def engine(self, endpoint: EndpointId) -> Engine:
        return self._endpoints[endpoint].engine

    def wait_for_subscribers(self, timeout: float = 5.0) -> None:
        """Block until every publisher has seen a subscription (XPUB only)."""
        deadline = time.monotonic() + timeout
        for sim in self._endpoints.values():
            sim.publisher.wait_for_subscriber(max(0.0, deadline - time.monotonic()))

    def flush(self, timeout: float = 5.0) -> None:
        """Block until every batch published so far is on the wire."""
        deadline = time.monotonic() + timeout
        for sim in self._endpoints.values():
            sim.publisher.flush(max(0.0, deadline - time.monotonic()))

    # --- traffic -------------------------------------------------------------------------------
    def step(self, requests: int = 1) -> int:
        """Send ``requests`` requests, each to a random endpoint; return the blocks stored."""
        stored = 0
        with self._lock:
            for _ in range(requests):
                sim = self._endpoints[self._rng.choice(list(self._endpoints))]
                request = sim.workload.next_request()
                stored += self._run(sim, request)
        return stored

    def submit(self, endpoint: EndpointId, request: Request) -> list[Event]:
        """Run one given request on one endpoint; return (and publish) its events."""
        with self._lock:
            sim = self._endpoints[endpoint]
            events = self._serve(sim, request)
            self._recent.append(request)
            if events:
                sim.publisher.publish(events)
            return events

    def route(self, endpoint: EndpointId, query: SimQuery) -> int:
        """Run ``query``'s prompt as a request on ``endpoint`` (as a router that picked it would)
        and publish its events; return the engine's ``cached_tokens`` for it."""
        adapter = self._adapter if query.lora_name or query.lora_id is not None else None
        request = Request(query.token_ids, (), adapter, query.cache_salt)
        self.submit(endpoint, request)
        with self._lock:
            return self._endpoints[endpoint].engine.last_cached_tokens

    def run_unpublished(self, endpoint: EndpointId, requests: int) -> None:
        """Run ``requests`` requests of the endpoint's workload whose events are lost: the
        engine evicts and stores, nothing is published and no sequence number is used."""
        with self._lock:
            sim = self._endpoints[endpoint]
            for _ in range(requests):
                self._serve(sim, sim.workload.next_request())

    def _serve(self, sim: SimEndpoint, request: Request) -> list[Event]:
        events = sim.engine.run(request)
        metrics = self._metrics.get(sim.id.pod)
        if metrics is not None:
            metrics.observe(sim.id.dp_rank, prompt_tokens=len(request.prompt),
                            output_tokens=len(request.output))  # fmt: skip
        return events

    def clear(self, endpoint: EndpointId) -> None:
        """Reset that endpoint's prefix cache and publish ``AllBlocksCleared``."""
        with self._lock:
            sim = self._endpoints[endpoint]
            sim.publisher.publish(sim.engine.clear())

    def restart(self, pod: str) -> None:
        """Restart every rank of ``pod``: empty caches, seq back to 0, nothing published."""
        with self._lock:
            for sim in self._endpoints.values():
                if sim.id.pod == pod:
                    sim.engine.restart()
                    sim.publisher.restart()

    def start(
        self, *, requests_per_s: float | None = None, blocks_per_s: float | None = None
    ) -> None:
        """Drive traffic from a background thread at one of the two rates, until ``stop()``."""
        if self._traffic is not None:
            raise SimError("traffic is already running")
        traffic = Traffic(self.step, requests_per_s=requests_per_s, blocks_per_s=blocks_per_s)
        traffic.start()
        self._traffic = traffic

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the traffic thread (if any); re-raise what made it fail."""
        traffic, self._traffic = self._traffic, None
        if traffic is not None:
            traffic.stop(timeout)

    def _run(self, sim: SimEndpoint, request: Request) -> int:
        events = self._serve(sim, request)
        self._recent.append(request)
        if events:
            sim.publisher.publish(events)
        return sum(len(e.block_hashes) for e in events if isinstance(e, BlockStored))

    # --- ground truth --------------------------------------------------------------------------
    def sample_query(self) -> SimQuery:
        """A realistic router question about recent traffic (hits at various depths, misses)."""
        with self._lock:
            return self._sampler.sample(self._recent)

    def ground_truth(self, query: SimQuery, block_size: int | None = None) -> dict[EndpointId, int]:
        """Leading full blocks of the query each endpoint truly holds (only those > 0).

        Computed from the engines' cached token prefixes, not from any index (see
        ``Engine.matched_blocks`` for how the adapter and the salt select blocks).
        """
        size = block_size or self.block_size
        if query.model != self.model:
            return {}
        truth: dict[EndpointId, int] = {}
        with self._lock:
            for endpoint, sim in self._endpoints.items():
                if sim.engine.block_size != size:
                    continue
                best = sim.engine.matched_blocks(query)
                if best:
                    truth[endpoint] = best
        return truth

    def query_blocks(self, query: SimQuery, block_size: int | None = None) -> int:
        """Full blocks in the query (a partial tail does not count)."""
        return len(query.token_ids) // (block_size or self.block_size)

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop traffic, close every publisher and the ZMQ context. Idempotent."""
        try:
            self.stop()
        finally:
            for sim in self._endpoints.values():
                sim.publisher.close()
            for server in self._engine_servers.values():
                server.close()
            if not self._ctx.closed:
                self._ctx.term()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
