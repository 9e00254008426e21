"""The simulator's ground truth: which cached blocks answer a query. Pure.

Independent of how anyone indexes the events: a block is known by its ``Context`` (adapter and
cache salt) and a 128-bit BLAKE2 digest of its exact token prefix (storing the prefixes themselves
would cost memory quadratic in the request length), never by engine hashes or extra keys.
``selects`` says which contexts a ``SimQuery`` may match:
- the cache salt must be equal (``None`` only matches ``None``);
- a query naming no adapter (neither ``lora_name`` nor ``lora_id``) selects blocks without one;
- otherwise every adapter field the query gives must be the block's.

Stateless: any thread may call these; nothing here raises.
"""

import hashlib
from array import array
from typing import NamedTuple

from kvsync.sim.records import Adapter, SimQuery


class Context(NamedTuple):
    """What besides tokens makes a block distinct: the adapter and the request's cache salt."""

    lora_id: int | None
    lora_name: str | None
    cache_salt: str | None


def context_of(adapter: Adapter | None, salt: str | None) -> Context:
    """The context a request's blocks are cached under."""
    return Context(adapter.id if adapter else None, adapter.name if adapter else None, salt)


def prefix_digests(token_ids: tuple[int, ...] | list[int], block_size: int) -> list[bytes]:
    """For each full block, a digest of all the tokens from the start through that block."""
    hasher = hashlib.blake2b(digest_size=16)
    digests = []
    for end in range(block_size, len(token_ids) + 1, block_size):
        hasher.update(array("I", token_ids[end - block_size : end]).tobytes())
        digests.append(hasher.copy().digest())
    return digests


def selects(query: SimQuery, context: Context) -> bool:
    """Whether blocks cached under ``context`` answer ``query`` (see ``Engine.matched_blocks``)."""
    if query.cache_salt != context.cache_salt:
        return False
    if query.lora_name is None and query.lora_id is None:
        return context.lora_name is None and context.lora_id is None
    return (query.lora_name is None or query.lora_name == context.lora_name) and (
        query.lora_id is None or query.lora_id == context.lora_id
    )
