"""kvsync's own chained block keys, computed from token ids. Pure: no I/O, no clock, no state.

Why: vLLM's block hashes depend on the release, the hash algorithm, a per-process seed and Python
pickling, so a router cannot reproduce them (the design's §3, "Keys"). kvsync therefore keys every
block by what a router does know: the tokens, the block size and the block's extra keys.

    key_i = xxh3_64(token bytes of block i [+ msgpack(extra keys of block i)], seed=key_{i-1})
    key_{-1} = ROOT

Token bytes are the ids as native uint32. The hashing runs in C (``kvsync._native``: the index
stores and walks chains there without a Python object per token or per block); ``chain`` is the
same computation for Python callers. Keys are only ever compared inside one process, so native
byte order is fine. Contexts (model, adapter, block size) are kept apart by the index, so one
fixed ROOT serves them all. An xxh3 result of 0 (a 2^-64 event) is read as 1: 0 marks an empty
cell in the C tables.

Extra keys are normalised before they are folded in (``normalise_extras``): entries equal to the
event's LoRA name are dropped (the adapter is already the context), so a LoRA block hashes the
same whichever vLLM release published it; a block with nothing left is a plain block. A query's
``cache_salt`` S is the extra keys ``[S]`` of block 0, exactly as vLLM publishes a salted request.

Engine hashes (the engine's own block ids, which only resolve parents and removals per
endpoint) become uint64 map keys through ``u64``, the same in every backend.

A router's token ids arrive as JSON: ``json_token_ids`` parses the array straight into uint32 (a
``memoryview`` of format ``I``, which the walk reads as it is), never one Python int per id.

Raises ``ValueError`` (message ``tokens: ...``) for a msgpack or JSON token array that is not
ints in [0, 2^32), ``OverflowError`` for such ids given as Python ints (the decoder and the HTTP
API reject those first).
"""

from collections.abc import Sequence
from typing import Any, Final

import msgspec
import xxhash

from kvsync import _native
from kvsync.model import EngineHash

ROOT: Final = _native.ROOT  # any fixed value; it only has to be the same everywhere

_encode: Final = msgspec.msgpack.encode

# Extra keys of one block after normalisation: msgpack bytes, or None for a plain block.
Extra = bytes | None


def normalise_extras(entries: list[Any] | None, lora_name: str | None) -> Extra:
    """One block's extra keys, minus the LoRA name, as bytes; None when nothing is left."""
    if not entries:
        return None
    if lora_name is not None:
        entries = [e for e in entries if e != lora_name]
        if not entries:
            return None
    return _encode(entries)


def salt_extra(cache_salt: str) -> bytes:
    """Block 0's extra keys for a request with ``cache_salt`` (what vLLM publishes: ``[salt]``)."""
    return _encode([cache_salt])


def chain(
    parent: int,
    token_ids: Sequence[int] | msgspec.Raw,
    block_size: int,
    extras: list[Extra] | None = None,
) -> list[int]:
    """Keys of the full blocks of ``token_ids`` (ints, or a msgpack array such as a decoded
    event's) after ``parent`` (ROOT for a chain start); ``extras`` (one entry per block, or None
    when no block has any) are folded into their block's key. A block's token bytes have a
    fixed length per context, so appending the extra bytes cannot make a salted block collide
    with a plain one by construction."""
    return _native.chain(parent, token_ids, block_size, extras)


def query_keys(
    token_ids: Sequence[int], block_size: int, cache_salt: str | None = None
) -> list[int]:
    """The keys of a query's full blocks (what ``KeyTable.walk`` computes as it goes)."""
    n_blocks = len(token_ids) // block_size
    extras: list[Extra] | None = None
    if cache_salt is not None and n_blocks:
        extras = [salt_extra(cache_salt)] + [None] * (n_blocks - 1)
    return chain(ROOT, token_ids, block_size, extras)


def json_token_ids(json_array: msgspec.Raw | bytes) -> Sequence[int]:
    """The ids of a JSON array of ints in [0, 2^32) as uint32, without a Python int per id;
    ``ValueError`` for any other JSON value."""
    return memoryview(_native.json_token_ids(json_array)).cast("I")


def u64(engine_hash: EngineHash) -> int:
    """Engine hashes as uint64 map keys: 32-byte hashes (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``)
    are hashed down to 64 bits; a collision inside one endpoint's cache is ~2^-64 likely."""
    if isinstance(engine_hash, int):
        return engine_hash
    return xxhash.xxh3_64_intdigest(engine_hash)


def u64s(engine_hashes: list[EngineHash]) -> list[int]:
    """``u64`` of each; a decoded list holds one type (a mixed list fails decoding)."""
    if engine_hashes and type(engine_hashes[0]) is int and type(engine_hashes[-1]) is int:
        return engine_hashes  # type: ignore[return-value]  # ints: one type per list
    return [u64(h) for h in engine_hashes]
