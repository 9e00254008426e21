"""The load figures of one engine, as scraped. Pure."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One engine's figures as scraped; None when its ``/metrics`` does not carry that one."""

    running: float | None = None  # requests in the running batch
    waiting: float | None = None  # requests queued
    kv_cache_usage: float | None = None  # 0..1 of the KV-cache blocks in use
    prefix_queries: float | None = None  # tokens looked up in the prefix cache, cumulative
    prefix_hits: float | None = None  # of those, tokens found cached, cumulative
    prefix_hit_rate: float | None = None  # V0's own gauge (V1: from the two counters)
