"""The vLLM / SGLang KV-event wire schema, as msgspec types. Pure; no logic beyond layout.

Events were positional arrays with the tag first up to vLLM 0.23 and are tagged maps from 0.24
(vllm-project/vllm#42892; SGLang from about 0.5.20). msgspec cannot hold array-like and map
Structs in one union, so each layout gets its own subclasses of the ``kvsync.model`` records and
its own union. Array layouts tolerate extra trailing fields (newer releases append), maps ignore
unknown keys and treat missing ones as null. Only the fields kvsync reads are declared.
"""

from typing import Final

import msgspec

from kvsync import model


class ArrayStored(model.BlockStored, array_like=True):
    """BlockStored as vLLM <= 0.23 sends it: 5 fields (0.9) to 12 (0.22); extra fields ignored."""


class ArrayRemoved(model.BlockRemoved, array_like=True):
    """BlockRemoved as vLLM <= 0.23 sends it."""


class ArrayCleared(model.AllBlocksCleared, array_like=True):
    """AllBlocksCleared as vLLM <= 0.23 sends it: ``["AllBlocksCleared"]``."""


class MapStored(model.BlockStored):
    """BlockStored as a tagged map (vLLM >= 0.24, SGLang >= 0.5.20)."""

    cache_salt: str | None = None  # SGLang only; vLLM puts the salt in block 0's extra keys

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache_salt is not None and self.block_hashes:
            # Same meaning as vLLM's: the salt is an extra key of the first block of a request.
            # A chain that continues a parent is not a request's first block.
            if self.parent_block_hash is None:
                extra = self.extra_keys or [None] * len(self.block_hashes)
                extra[0] = [*(extra[0] or ()), self.cache_salt]
                self.extra_keys = extra
            self.cache_salt = None


class MapRemoved(model.BlockRemoved):
    """BlockRemoved as a tagged map."""


class MapCleared(model.AllBlocksCleared):
    """AllBlocksCleared as a tagged map: ``{"type": "AllBlocksCleared"}``."""


ArrayEvent = ArrayStored | ArrayRemoved | ArrayCleared
MapEvent = MapStored | MapRemoved | MapCleared


class ArrayBatch(msgspec.Struct, array_like=True, gc=False):
    """``[ts, events, data_parallel_rank]``; vLLM 0.9.0 sent only ``[ts, events]``."""

    ts: float
    events: list[msgspec.Raw]
    data_parallel_rank: int | None = None


class MapBatch(msgspec.Struct, gc=False):
    """The same envelope sent as a map (accepted; a batch struct without array_like would do it)."""

    ts: float
    events: list[msgspec.Raw]
    data_parallel_rank: int | None = None


class ArrayBatchOfArrays(msgspec.Struct, array_like=True, gc=False):
    """Fast path: the whole array-era batch in one call."""

    ts: float
    events: list[ArrayEvent]
    data_parallel_rank: int | None = None


class ArrayBatchOfMaps(msgspec.Struct, array_like=True, gc=False):
    """Fast path: the whole map-era batch in one call."""

    ts: float
    events: list[MapEvent]
    data_parallel_rank: int | None = None


# msgpack markers of the first byte of an encoded value.
MAP_MARKERS: Final = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
ARRAY_MARKERS: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}

END_SEQ: Final = b"\xff" * 8  # replay end marker: seq -1 as 8 big-endian bytes, empty payload
SEQ_BYTES: Final = 8


def encode_seq(seq: int) -> bytes:
    """The 8-byte big-endian sequence frame."""
    return seq.to_bytes(SEQ_BYTES, "big")
