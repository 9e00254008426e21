"""kvsync's own chained block keys, computed from token ids. Pure: no I/O, no clock, no state.

Why: vLLM's block hashes depend on the release, the hash algorithm, a per-process seed and Python
pickling, so a router cannot reproduce them (architecture.md §3). kvsync therefore keys every
block by what a router does know: the tokens, the block size and the block's extra keys.

    key_i = xxh3_64(token bytes of block i [+ msgpack(extra keys of block i)], seed=key_{i-1})
    key_{-1} = ROOT

Token bytes are the ids as native uint32 (``array('I')``), converted in C once per event (per 64
blocks for a query) and sliced per block: no per-token Python work. Keys are only ever compared
inside one process, so native byte order is fine. Contexts (model, adapter, block size) are kept
apart by the index, so one fixed ROOT serves them all.

Extra keys are normalised before they are folded in (``normalise_extras``): entries equal to the
event's LoRA name are dropped (the adapter is already the context), so a LoRA block hashes the
same whichever vLLM release published it; a block with nothing left is a plain block. A query's
``cache_salt`` S is the extra keys ``[S]`` of block 0, exactly as vLLM publishes a salted request.

Raises nothing for valid input (token ids in [0, 2^32), block_size > 0); ``OverflowError`` from
``array`` for token ids outside that range (the decoder and the HTTP API reject those first).
"""

from array import array
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, Final

import msgspec
import xxhash

ROOT: Final = 0x6B76_7379_6E63_0001  # any fixed value; it only has to be the same everywhere

_hash: Final = xxhash.xxh3_64_intdigest
_encode: Final = msgspec.msgpack.encode
_TOKEN_BYTES: Final = array("I").itemsize  # 4 on every platform kvsync runs on

# Extra keys of one block after normalisation: msgpack bytes, or None for a plain block.
Extra = bytes | None


def token_view(token_ids: Sequence[int]) -> bytes:
    """The token ids as one flat byte string (uint32 each). Bytes, not a memoryview: slicing
    bytes then hashing is faster than slicing a view (one object either way, 64 bytes copied)."""
    return array("I", token_ids).tobytes()


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
    tokens: bytes,
    block_size: int,
    n_blocks: int,
    extras: Sequence[Extra] | None = None,
) -> list[int]:
    """Keys of ``n_blocks`` consecutive blocks after ``parent`` (ROOT for a chain start).

    ``tokens`` is a ``token_view`` holding at least ``n_blocks * block_size`` tokens; ``extras``
    (one entry per block, or None when no block has any) are folded into their block's key.
    """
    step = block_size * _TOKEN_BYTES
    keys: list[int] = []
    append = keys.append
    key = parent
    if extras is None or not any(extras):
        for start in range(0, n_blocks * step, step):
            key = _hash(tokens[start : start + step], key)
            append(key)
        return keys
    for i in range(n_blocks):
        block = tokens[i * step : (i + 1) * step]
        extra = extras[i]
        # A block's token bytes have a fixed length per context, so appending the extra bytes
        # cannot make a salted block collide with a plain one by construction.
        key = _hash(block if extra is None else block + extra, key)
        append(key)
    return keys


def query_keys(
    token_ids: Sequence[int], block_size: int, cache_salt: str | None = None, convert: int = 64
) -> Iterator[int]:
    """The keys of a query's full blocks, one at a time, lazily: a lookup hashes only up to the
    first block no endpoint holds. Tokens are converted ``convert`` blocks at a time, so an
    early stop wastes at most that many conversions (64 measured best, BENCHMARKS.md
    ``## Index``); bytes slices hash faster than memoryview slices."""
    n_blocks = len(token_ids) // block_size
    step = block_size * _TOKEN_BYTES
    salt = None if cache_salt is None else salt_extra(cache_salt)
    key = ROOT
    for first in range(0, n_blocks, convert):
        count = min(convert, n_blocks - first)
        data = array("I", token_ids[first * block_size : (first + count) * block_size]).tobytes()
        start = 0
        if salt is not None:  # block 0 of a salted request: see the module docstring
            key = _hash(data[:step] + salt, key)
            yield key
            start, salt = step, None
        for offset in range(start, count * step, step):
            key = _hash(data[offset : offset + step], key)
            yield key


def query_chunks(
    token_ids: Sequence[int], block_size: int, cache_salt: str | None = None, chunk: int = 32
) -> Iterator[list[int]]:
    """``query_keys`` in lists of ``chunk`` keys, then twice as many each time."""
    keys = query_keys(token_ids, block_size, cache_salt)
    while batch := list(islice(keys, chunk)):
        yield batch
        chunk *= 2
