"""Byte-exact vLLM wire layouts by release ("era"): kvsync records → msgpack frames. Pure.

Each era declares the event classes of that vLLM release with the same fields in the same order
and the same msgspec options, so msgspec writes the same bytes a real engine writes (the golden
captures in tests/data/vectors prove it): positional arrays up to 0.23, tagged maps from 0.24
(keys whose value is ``None`` are left out only for fields that have a default; note that a map
struct that could hold 16 or more keys gets a map16 header, as in 0.33). The batch is always the
array ``[ts, events, data_parallel_rank]``.

| era    | events | BlockStored fields               | hashes (default) | replay reply        |
| ------ | ------ | -------------------------------- | ---------------- | ------------------- |
| 0.10.1 | array  | 5                                | signed int64     | ``[b"", seq, p]``   |
| 0.17   | array  | 8: + medium, lora_name, extra_keys | uint64         | ``[b"", seq, p]``   |
| 0.23   | array  | 11: + group_idx, kv_cache_spec_* | uint64           | ``[b"", seq, p]``   |
| 0.25   | map    | 11                               | uint64           | ``[b"", seq, p]``   |
| 0.33   | map    | 15: + locality, ownership, …     | uint64           | ``[b"", topic, seq, p]`` |

(0.33 adds locality, ownership, session_id and lookahead_token_ids.)

Engine hashes reach this module as 32-byte digests (or, for hand-written scenarios, as ints) and
leave it as the era's wire value: the last 8 bytes as uint64, the same as signed int64, or the
32 bytes themselves (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``). Raises ``SimError`` only for an
impossible combination (bytes hashes in 0.10.1, an int hash in bytes mode).
"""

import enum
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from kvsync import model
from kvsync.events import wire
from kvsync.sim.records import SimError

WireHash = int | bytes
_MASK: Final = (1 << 64) - 1
_SIGN: Final = 1 << 63


class Era(enum.StrEnum):
    """A vLLM release whose wire layout the publisher reproduces."""

    V0_10_1 = "0.10.1"
    V0_17 = "0.17"
    V0_23 = "0.23"
    V0_25 = "0.25"
    V0_33 = "0.33"

    @property
    def maps(self) -> bool:
        """Events are tagged maps (vLLM >= 0.24) rather than positional arrays."""
        return self in (Era.V0_25, Era.V0_33)

    @property
    def replay_topic(self) -> bool:
        """Replay replies carry the topic frame (vLLM >= 0.26)."""
        return self is Era.V0_33

    @property
    def default_hashes(self) -> "HashFormat":
        return HashFormat.INT64 if self is Era.V0_10_1 else HashFormat.UINT64


class HashFormat(enum.StrEnum):
    """How block hashes go on the wire."""

    UINT64 = "uint64"  # vLLM >= 0.10.2 default
    INT64 = "int64"  # vLLM <= 0.10.1 (Python hash()), SGLang
    BYTES = "bytes"  # VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0: the 32-byte digest


# --- array era: every field present, tag first --------------------------------------------------
class Stored0101(msgspec.Struct, array_like=True, tag="BlockStored"):
    block_hashes: list[WireHash]
    parent_block_hash: WireHash | None
    token_ids: msgspec.Raw  # vLLM's list[int], already msgpack in the record: copied as is
    block_size: int
    lora_id: int | None


class Stored017(Stored0101, array_like=True, tag="BlockStored"):
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None


class Stored023(Stored017, array_like=True, tag="BlockStored"):
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class Removed0101(msgspec.Struct, array_like=True, tag="BlockRemoved"):
    block_hashes: list[WireHash]


class Removed017(Removed0101, array_like=True, tag="BlockRemoved"):
    medium: str | None


class Removed023(Removed017, array_like=True, tag="BlockRemoved"):
    group_idx: int | None = None


class ArrayCleared(msgspec.Struct, array_like=True, tag="AllBlocksCleared"):
    pass


# --- map era: tag under "type", defaulted fields omitted while None -----------------------------
class Stored025(msgspec.Struct, tag="BlockStored", tag_field="type", omit_defaults=True):
    block_hashes: list[WireHash]
    parent_block_hash: WireHash | None
    token_ids: msgspec.Raw  # vLLM's list[int], already msgpack in the record: copied as is
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class Stored033(Stored025, tag="BlockStored", tag_field="type", omit_defaults=True):
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None


class Removed025(msgspec.Struct, tag="BlockRemoved", tag_field="type", omit_defaults=True):
    block_hashes: list[WireHash]
    medium: str | None
    group_idx: int | None = None


class Removed033(Removed025, tag="BlockRemoved", tag_field="type", omit_defaults=True):
    locality: str | None = None
    ownership: str | None = None


class MapCleared(msgspec.Struct, tag="AllBlocksCleared", tag_field="type", omit_defaults=True):
    pass


_ENCODER: Final = msgspec.msgpack.Encoder()


def wire_hash(value: WireHash, hashes: HashFormat) -> WireHash:
    """An engine hash (32-byte digest or int) as this hash format puts it on the wire."""
    if hashes is HashFormat.BYTES:
        if not isinstance(value, bytes):
            raise SimError("bytes hash format needs 32-byte digests, got an int")
        return value
    unsigned = (int.from_bytes(value, "big") if isinstance(value, bytes) else value) & _MASK
    if hashes is HashFormat.INT64 and unsigned >= _SIGN:
        return unsigned - (1 << 64)
    return unsigned


def _stored(era: Era, ev: model.BlockStored, hashes: HashFormat) -> msgspec.Struct:
    block_hashes = [wire_hash(h, hashes) for h in ev.block_hashes]
    parent = None if ev.parent_block_hash is None else wire_hash(ev.parent_block_hash, hashes)
    common = (block_hashes, parent, ev.token_ids, ev.block_size, ev.lora_id)
    if era is Era.V0_10_1:
        return Stored0101(*common)
    extra = list(ev.extra_keys) if ev.extra_keys is not None else None
    if era is Era.V0_17:
        return Stored017(*common, ev.medium, ev.lora_name, extra)
    cls = {Era.V0_23: Stored023, Era.V0_25: Stored025, Era.V0_33: Stored033}[era]
    return cls(*common, ev.medium, ev.lora_name, extra, ev.group_idx, ev.kv_cache_spec_kind)


def _removed(era: Era, ev: model.BlockRemoved, hashes: HashFormat) -> msgspec.Struct:
    block_hashes = [wire_hash(h, hashes) for h in ev.block_hashes]
    if era is Era.V0_10_1:
        return Removed0101(block_hashes)
    if era is Era.V0_17:
        return Removed017(block_hashes, ev.medium)
    cls = {Era.V0_23: Removed023, Era.V0_25: Removed025, Era.V0_33: Removed033}[era]
    return cls(block_hashes, ev.medium, ev.group_idx)


def event_struct(era: Era, event: model.Event, hashes: HashFormat) -> msgspec.Struct:
    """The era's own event object for a kvsync record (what msgspec encodes)."""
    if era is Era.V0_10_1 and hashes is HashFormat.BYTES:
        raise SimError("vLLM 0.10.1 sends int hashes only")
    if isinstance(event, model.BlockStored):
        return _stored(era, event, hashes)
    if isinstance(event, model.BlockRemoved):
        return _removed(era, event, hashes)
    return MapCleared() if era.maps else ArrayCleared()


def raw_event(era: Era, event: model.Event, hashes: HashFormat) -> msgspec.Raw:
    """One event encoded ahead of time, for ``encode_batch`` (and ``Publisher.publish``) to copy.

    A benchmark that replays recorded traffic encodes each event once and sends it many times;
    the batch around it (ts, dp_rank) is still encoded per send.
    """
    return msgspec.Raw(_ENCODER.encode(event_struct(era, event, hashes)))


def encode_batch(
    era: Era,
    events: Sequence[model.Event | msgspec.Raw],
    *,
    ts: float,
    dp_rank: int,
    hashes: HashFormat,
) -> bytes:
    """The msgpack payload ``[ts, events, dp_rank]``; ``Raw`` events are sent as they are."""
    items = [e if isinstance(e, msgspec.Raw) else event_struct(era, e, hashes) for e in events]
    return _ENCODER.encode((float(ts), items, dp_rank))


def bad_event(era: Era, block_size: int) -> msgspec.Raw:
    """A BlockStored in the era's layout with one token too few for its one block."""
    ev = model.BlockStored(
        block_hashes=[b"\x01" * 32],
        parent_block_hash=None,
        token_ids=model.encode_tokens(range(block_size)),
        block_size=block_size,
        medium=model.GPU,
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    struct = event_struct(era, ev, era.default_hashes)
    short = model.encode_tokens(range(block_size - 1))
    struct.token_ids = short  # type: ignore[attr-defined]  # every Stored* has it
    return msgspec.Raw(_ENCODER.encode(struct))


def replay_message(era: Era, topic: bytes, seq: int, payload: bytes) -> list[bytes]:
    """A replay reply for one batch as the DEALER sees it (the ROUTER prepends the identity)."""
    if era.replay_topic:
        return [b"", topic, wire.encode_seq(seq), payload]
    return [b"", wire.encode_seq(seq), payload]


def replay_end(era: Era) -> list[bytes]:
    """The end-of-replay marker: seq 0xFFFF_FFFF_FFFF_FFFF, empty payload (and empty topic)."""
    if era.replay_topic:
        return [b"", b"", wire.END_SEQ, b""]
    return [b"", wire.END_SEQ, b""]
