"""Explain, an optional capability of an index backend: why a match stopped where it did. Pure.

``IndexBackend`` does not include it (a shared backend need not remember removals): the HTTP
side checks ``isinstance(backend, Explaining)`` at run time and answers 501 without it. A
backend that has it answers ``explain(query, now)``: the same walk as ``match``, plus, for every
endpoint that stored into the query's context, the first query block it does not hold and what
the backend remembers of that block for that endpoint:

- ``removed``: a BlockRemoved of that endpoint released it, at wall-clock ``at``;
- ``evicted``: capacity eviction took it (``cause`` ``max_keys``), at ``at``;
- nothing (``reason`` None): not remembered: never stored, or forgotten (the memory is capped).

and, when the whole context is gone, why (``context_gone``: ``max_contexts`` or ``idle_ttl``).
What happened to the endpoint itself (a reset, a replay in progress) is ingest's knowledge; the
HTTP side adds it (``kvsync.http.explain``). Raises nothing.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from kvsync.index.values import Query
from kvsync.model import EndpointId


class BlockMemory(msgspec.Struct, frozen=True):
    """What the backend remembers of a block an endpoint no longer holds."""

    reason: str  # removed, evicted
    at: float  # wall-clock seconds (the ``now`` of the apply that did it)
    cause: str | None = None  # the eviction's reason (max_keys)


class EndpointRun(msgspec.Struct, frozen=True):
    """One endpoint of the context: its run and what stopped it."""

    endpoint: EndpointId
    matched_blocks: int
    stopped_at: int  # the first query block it does not hold; query_blocks when none
    memory: BlockMemory | None = None


class Explanation(msgspec.Struct, frozen=True):
    block_size: int
    query_blocks: int
    runs: Sequence[EndpointRun]  # matching endpoints first (as match orders them), then the rest
    context_gone: BlockMemory | None = None  # the context was evicted whole (cause: the reason)


@runtime_checkable
class Explaining(Protocol):
    """The explain capability (``kvsync.index.memory.backend.MemoryBackend`` has it)."""

    def explain(self, query: Query, now: float) -> Explanation:
        """The match of ``query`` with the reason each endpoint's run stopped (module doc)."""
        ...
