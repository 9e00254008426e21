"""The ``/metrics`` text a simulated vLLM pod serves, rendered from its engines' real state.

One ``EngineMetrics`` per pod: a prometheus-client registry holding what vLLM's
``PrometheusStatLogger`` exposes for the figures kvsync reads (``kvsync.load.names``), read from
each rank's ``Engine`` at scrape time (running requests, KV-cache usage, prefix-cache queries and
hits in tokens), plus vLLM's per-request histograms observed as requests run, so a body has the
size and shape of a real one (tens of kB). Every sample carries vLLM's labels ``model_name`` and
``engine`` (the rank). ``names`` picks the release's metric names:

- ``legacy``: vLLM <= 0.9.1 (``vllm:gpu_cache_usage_perc``, ``vllm:gpu_prefix_cache_*``);
- ``both``: 0.9.2 - 0.10 (the new names and the deprecated old ones);
- ``current``: >= 0.11 (the new names only).

Thread-safe as far as the engines are: ``render`` reads them under the lock it is given (the
fleet's), ``observe`` is called by the fleet under that same lock.
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvsync.sim.engine import Engine

MetricNames = Literal["legacy", "both", "current"]
LABELS: Final = ("model_name", "engine")
# vLLM's buckets (vllm/v1/metrics/loggers.py) for the histograms the simulator can fill honestly.
_TTFT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_LATENCY_BUCKETS: Final = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
_ITERATION_BUCKETS: Final = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def _token_buckets(max_model_len: int) -> list[float]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, ... up to ``max_model_len``."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_model_len:
                return buckets
            buckets.append(float(mantissa * scale))
        scale *= 10


class _EngineState(Collector):
    """Gauges and counters read from the engines at collect time."""

    def __init__(
        self,
        model: str,
        engines: Callable[[], Mapping[int, Engine]],
        names: MetricNames,
        lock: Callable[[], AbstractContextManager[object]],
    ) -> None:
        self._model = model
        self._engines = engines
        self._names = names
        self._lock = lock

    def collect(self) -> Iterator[Metric]:
        new, old = self._names != "legacy", self._names != "current"
        running = GaugeMetricFamily(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            labels=LABELS,
        )
        waiting = GaugeMetricFamily(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            labels=LABELS,
        )
        usage = GaugeMetricFamily(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels=LABELS
        )
        old_usage = GaugeMetricFamily(
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            labels=LABELS,
        )
        queries = CounterMetricFamily(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            labels=LABELS,
        )
        hits = CounterMetricFamily(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            labels=LABELS,
        )
        old_queries = CounterMetricFamily(
            "vllm:gpu_prefix_cache_queries",
            "GPU prefix cache queries, in terms of number of queried tokens.",
            labels=LABELS,
        )
        old_hits = CounterMetricFamily(
            "vllm:gpu_prefix_cache_hits",
            "GPU prefix cache hits, in terms of number of cached tokens.",
            labels=LABELS,
        )
        with self._lock():
            for rank, engine in sorted(self._engines().items()):
                labels = [self._model, str(rank)]
                running.add_metric(labels, engine.running_requests)
                waiting.add_metric(labels, 0)
                usage.add_metric(labels, engine.kv_cache_usage)
                old_usage.add_metric(labels, engine.kv_cache_usage)
                for counter, value in (
                    (queries, engine.prefix_queries),
                    (old_queries, engine.prefix_queries),
                    (hits, engine.prefix_hits),
                    (old_hits, engine.prefix_hits),
                ):
                    counter.add_metric(labels, value)
        yield running
        yield waiting
        if new:
            yield from (usage, queries, hits)
        if old:
            yield from (old_usage, old_queries, old_hits)


class EngineMetrics:
    """One simulated pod's ``/metrics``: its ranks' engines, under the fleet's lock."""

    def __init__(
        self,
        *,
        model: str,
        engines: Mapping[int, Engine] | Callable[[], Mapping[int, Engine]],
        names: MetricNames = "current",
        lock: AbstractContextManager[object] | None = None,
        max_model_len: int = 16_384,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        source = engines if callable(engines) else (lambda: engines)
        self._state = _EngineState(model, source, names, lambda: lock or nullcontext())
        self.registry.register(self._state)
        tokens = _token_buckets(max_model_len)
        self._model = model

        def histogram(name: str, text: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, text, LABELS, buckets=buckets, registry=self.registry)

        self._prompt = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens
        )
        self._generation = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", tokens
        )
        self._iteration = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            _ITERATION_BUCKETS,
        )
        self._max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            tokens,
        )
        # The simulator runs requests in no time: its latencies are observed as zero, which
        # keeps the series (and the body's size) real without inventing numbers.
        self._latencies = [
            histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                _TTFT_BUCKETS,
            ),
            *(
                histogram(f"vllm:{name}_seconds", text, _LATENCY_BUCKETS)
                for name, text in (
                    ("e2e_request_latency", "Histogram of e2e request latency in seconds."),
                    ("request_queue_time", "Histogram of time spent in WAITING phase for request."),
                    (
                        "request_inference_time",
                        "Histogram of time spent in RUNNING phase for request.",
                    ),
                    (
                        "request_prefill_time",
                        "Histogram of time spent in PREFILL phase for request.",
                    ),
                    ("request_decode_time", "Histogram of time spent in DECODE phase for request."),
                )
            ),
        ]

    def observe(self, rank: int, *, prompt_tokens: int, output_tokens: int) -> None:
        """A request ran on ``rank``: vLLM's per-request histograms."""
        labels = (self._model, str(rank))
        self._prompt.labels(*labels).observe(prompt_tokens)
        self._generation.labels(*labels).observe(output_tokens)
        self._iteration.labels(*labels).observe(prompt_tokens + output_tokens)
        self._max_tokens.labels(*labels).observe(output_tokens)
        for latency in self._latencies:
            latency.labels(*labels).observe(0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition, as vLLM's ``GET /metrics`` answers it."""
        return generate_latest(self.registry)
