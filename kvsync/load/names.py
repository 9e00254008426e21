"""Which vLLM metric carries which load figure, release by release. Pure.

vLLM renamed its cache metrics in 0.9.2 (``gpu_`` dropped from names that are not about the GPU,
vLLM PR #18354) and kept both names through 0.10; 0.11 hides the old names
(``--show-hidden-metrics-for-version=0.10`` brings them back) and 0.12 removes them. A pod is
read with the first name of each row that its ``/metrics`` carries, so one daemon reads a mixed
fleet. The table in docs/load.md is this module in prose; keep them together.

| figure | names, preferred first | vLLM releases |
| --- | --- | --- |
| running requests | ``vllm:num_requests_running`` | every release |
| waiting requests | ``vllm:num_requests_waiting`` | every release |
| KV-cache usage (0..1) | ``vllm:kv_cache_usage_perc`` | >= 0.9.2 |
|  | ``vllm:gpu_cache_usage_perc`` | <= 0.10 (hidden in 0.11, gone in 0.12) |
| prefix-cache queries (tokens) | ``vllm:prefix_cache_queries_total`` | >= 0.9.2 |
|  | ``vllm:gpu_prefix_cache_queries_total`` | V1 engine <= 0.10 |
| prefix-cache hits (tokens) | ``vllm:prefix_cache_hits_total`` | >= 0.9.2 |
|  | ``vllm:gpu_prefix_cache_hits_total`` | V1 engine <= 0.10 |
| prefix-cache hit rate (0..1) | ``vllm:gpu_prefix_cache_hit_rate`` | V0 engine only (<= 0.10) |

Counters carry the ``_total`` suffix on the wire (prometheus-client appends it). Every sample
has the labels ``model_name`` and ``engine`` (the engine index: the data-parallel rank when one
server fronts several ranks); a sample without ``engine`` is the whole pod's.
"""

import enum
from typing import Final


class Figure(enum.StrEnum):
    """One load figure kvsync reads from an engine."""

    RUNNING = "running"
    WAITING = "waiting"
    KV_CACHE_USAGE = "kv_cache_usage"
    PREFIX_QUERIES = "prefix_cache_queries"
    PREFIX_HITS = "prefix_cache_hits"
    PREFIX_HIT_RATE = "prefix_cache_hit_rate"  # V0's own gauge; V1 gives the two counters


# Sample names per figure, preferred first (the module docstring says which release has which).
SAMPLE_NAMES: Final[dict[Figure, tuple[str, ...]]] = {
    Figure.RUNNING: ("vllm:num_requests_running",),
    Figure.WAITING: ("vllm:num_requests_waiting",),
    Figure.KV_CACHE_USAGE: ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    Figure.PREFIX_QUERIES: (
        "vllm:prefix_cache_queries_total",
        "vllm:gpu_prefix_cache_queries_total",
    ),
    Figure.PREFIX_HITS: ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    Figure.PREFIX_HIT_RATE: ("vllm:gpu_prefix_cache_hit_rate",),
}

ENGINE_LABEL: Final = "engine"
