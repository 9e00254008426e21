"""The prefix index's values: limits, endpoint context, query, answers, outcome, stats. Pure.

Plain values every index backend speaks (``kvsync.index.backend.IndexBackend``) with its callers
(ingest, HTTP, runtime), and the one home of the index's defaults (limits, medium weights, block
size). No logic beyond a derived field or two; raises nothing.

The values built per apply or per lookup (``Query``, ``Match``, ``MatchResult``,
``ApplyOutcome``) are msgspec Structs, the others dataclasses: a Struct is built in C (about
0.06 us), a frozen dataclass sets each field through ``object.__setattr__`` (about 0.55 us for
``Match``'s five), and a lookup builds one ``Match`` per endpoint that matched.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import msgspec

from kvsync.model import GPU, EndpointId

DEFAULT_MEDIUM_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType({GPU: 1.0, "CPU": 0.8})
OTHER_MEDIUM_WEIGHT: Final = 0.5  # any medium the weights do not name (STORAGE, DISK, ...)
ANY_MEDIUM: Final = "*"  # the key of a weights mapping that overrides OTHER_MEDIUM_WEIGHT
DEFAULT_BLOCK_SIZE: Final = 16  # the answer's block size for a model the index has not seen
UNKNOWN_PARENT: Final = "unknown_parent"  # the rejection of a BlockStored whose parent is unknown
EVICTION_LOW_WATERMARK: Final = 0.97  # capacity eviction goes a little below the limit: bursts


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on the index's memory, enforced as events arrive.

    The defaults suit a fleet of about 100 pods serving a handful of models and LoRA adapters:
    ``max_keys_per_context`` 4,000,000 covers 100 pods x 40,000 distinct 16-token blocks each
    (about 80 GiB of KV cache per pod for Llama-3-8B: GPU plus some CPU offload) before shared
    prefixes are counted; at the measured ~100 bytes per (block, endpoint) that is about
    0.4 GiB per context (BENCHMARKS.md, ``## Index``). Capacity eviction is a safety net for
    lost removals: set the limit above what the fleet's caches can hold.
    ``max_contexts`` 1,000 and ``idle_ttl_seconds`` 20 minutes are AIBrix's defaults (AIBrix
    keeps only 10,000 prefixes per context, too few for such a fleet).
    """

    max_contexts: int = 1_000
    max_keys_per_context: int = 4_000_000
    idle_ttl_seconds: float = 20 * 60.0


DEFAULT_LIMITS: Final = Limits()  # frozen: one shared default is safe


@dataclass(frozen=True, slots=True)
class EndpointContext:
    """What discovery knows of an endpoint: its model and the pod's LoRA label, if any."""

    model: str
    lora_id: int | None = None


class Query(msgspec.Struct, frozen=True):
    """A lookup: the request's tokens and what selects the context (``lora_name`` wins over
    ``lora_id``). ``pods`` keeps only those pods (every dp rank); None means all."""

    model: str
    token_ids: Sequence[int]
    lora_name: str | None = None
    lora_id: int | None = None
    cache_salt: str | None = None
    pods: frozenset[str] | None = None


class Match(msgspec.Struct, frozen=True, gc=False):
    """One endpoint's answer: leading query blocks it holds, contiguously from block 0.

    Not tracked by the garbage collector (``gc=False``): its fields cannot lead back to it.
    """

    endpoint: EndpointId
    matched_blocks: int
    score: float
    by_medium: Mapping[str, int]
    block_size: int = 0  # of this answer; differs from the result's only in mixed contexts

    @property
    def matched_tokens(self) -> int:
        return self.matched_blocks * self.block_size


class MatchResult(msgspec.Struct, frozen=True):
    """``matches`` sorted by score, matched blocks (descending), then pod and dp rank."""

    block_size: int
    query_blocks: int
    matches: Sequence[Match]

    def percent(self, match: Match) -> int:
        """floor(100 x matched / query blocks), the API's ``percent``."""
        return 100 * match.matched_blocks // self.query_blocks if self.query_blocks else 0


class ApplyOutcome(msgspec.Struct):
    """What one ``apply`` did, for the caller to count and log (each dict is its own: msgspec
    copies an empty mutable default per instance)."""

    stored_blocks: int = 0  # blocks an endpoint did not hold before
    removed_blocks: int = 0  # blocks an endpoint no longer holds in any copy
    cleared: int = 0  # AllBlocksCleared events
    events: dict[str, int] = {}  # by type name
    rejected: dict[str, int] = {}  # events by reason
    rejected_blocks: int = 0  # blocks of rejected events
    unknown_removed: int = 0  # removals of hashes the endpoint does not hold (joined late)
    evicted: dict[str, int] = {}  # by reason, during this apply
    blocks_held: int = 0  # by the endpoint after the batch (set by the backend, same lock)


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Sizes and eviction totals, for metrics and /v1/pods; any backend can count these (an
    in-memory backend adds its own in a subclass: ``kvsync.index.memory.index.MemoryStats``)."""

    endpoints: int
    contexts: int
    keys: int  # distinct blocks
    entries: int  # (block, endpoint) pairs
    blocks: Mapping[EndpointId, int] = field(default_factory=dict)  # held, per endpoint
    evictions: Mapping[str, int] = field(default_factory=dict)  # blocks since start, by reason
