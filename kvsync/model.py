"""kvsync's own records: what the decoder produces and the rest of the pipeline consumes.

Pure values, no I/O. The event records are msgspec Structs rather than dataclasses because the
decoder builds them straight from the wire (``kvsync.events.wire`` subclasses them with the array
and map layouts): converting each event into a second record would cost about a microsecond per
event on the hottest path. Treat them as immutable once decoded.

Validation that does not depend on the layout lives here, in ``__post_init__``: msgspec turns a
``ValueError`` raised there into a ``ValidationError`` for that event only.

``BlockStored.token_ids`` is a ``msgspec.Raw``: the msgpack array of token ids exactly as it came
off the wire, never a list of Python ints. Making one int per token and range-checking it was most
of the decoder's cost (the typed decode ran at 0.79x msgspec's untyped decode of the same bytes,
1.17x with Raw; BENCHMARKS.md, "## Decode"), and the index hashes the tokens in C from the
msgpack bytes anyway.
Invariant, checked in ``__post_init__`` (by ``kvsync._native.token_count``, in C): it is one
msgpack array of ints in [0, 2^32), ``len(block_hashes) * block_size`` of them. ``len()`` of the
Raw counts bytes, not tokens. Build the field with ``encode_tokens(ids)``; read it as ints with
``token_list(event)``.
"""

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, NamedTuple

import msgspec

from kvsync import _native
from kvsync.errors import Reason

UINT64_MASK: Final = (1 << 64) - 1
TOKEN_LIMIT: Final = 1 << 32
GPU: Final = "GPU"

# An engine block hash: an opaque id, unique per endpoint. Ints are normalised to uint64 (vLLM
# <= 0.10.1 and SGLang send signed int64); bytes (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0) are kept.
EngineHash = int | bytes
# Bytes hashes: 32 bytes (sha256), 64 when vLLM joins the sub-block hashes of a hybrid model's
# larger-block group (two sha256 digests).
WireHash = int | Annotated[bytes, msgspec.Meta(min_length=8, max_length=64)]
# Bounded so that no event can make a lookup allocate per-block buffers of absurd size (real
# block sizes are 1..a few thousand tokens; Mamba groups of hybrid models go higher).
MAX_BLOCK_SIZE: Final = 1 << 22
BlockSize = Annotated[int, msgspec.Meta(gt=0, le=MAX_BLOCK_SIZE)]


class EndpointState(enum.StrEnum):
    """An endpoint's ingest state, as ``GET /v1/pods`` and ``kvsync_endpoints{state}`` show it."""

    CONNECTING = "connecting"  # nothing applied yet, no replay in flight
    REPLAYING = "replaying"
    LIVE = "live"
    # Live, but the state was dropped after an unrecoverable loss: blocks cached before it are
    # unknown until stored again. A stream seen again from seq 0 makes the endpoint live.
    RESET = "reset"


class EndpointId(NamedTuple):
    """One publisher: a pod (``namespace/name``, or the static name) and its data-parallel rank."""

    pod: str
    dp_rank: int = 0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A publisher to subscribe to, as discovery (static or Kubernetes) describes it.

    Two descriptions of the same ``id`` that differ in any field mean the publisher changed
    (new address, new model, restarted container): its index state is purged and it is
    subscribed afresh. ``generation`` carries whatever discovery uses to tell incarnations apart
    (for a pod: uid and container restart count).
    """

    id: EndpointId
    model: str
    pub: str  # tcp://host:port of the PUB socket (IPv6 hosts in brackets)
    replay: str | None = None  # tcp://host:port of the ROUTER replay socket, if any
    lora_id: int | None = None  # the pod's LoRA label: the adapter when events name none
    topic: str = ""  # subscription prefix; "" = every topic
    generation: str = ""
    # http://host:port of the engine's own HTTP server (vLLM's OpenAI API: /tokenize, /metrics),
    # shared by every DP rank of the pod; None when not known (an endpoint registered at run time).
    engine: str | None = None


class BlockStored(msgspec.Struct, tag="BlockStored", tag_field="type", gc=False):
    """A chain of full blocks entered the prefix cache; fields in vLLM's declaration order."""

    block_hashes: list[WireHash]
    parent_block_hash: WireHash | None
    token_ids: msgspec.Raw  # a msgpack array of token ids: see the module docstring
    block_size: BlockSize
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[list[Any] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None

    def __post_init__(self) -> None:
        hashes: list[Any] = self.block_hashes  # ints or bytes: min() below tells a mix
        n_blocks = len(hashes)
        # ValueError "tokens: ..." unless a msgpack array of ints in [0, 2^32)
        count = _native.token_count(self.token_ids)
        if count != n_blocks * self.block_size:
            raise ValueError(
                f"{Reason.TOKENS}: {count} token ids for {n_blocks} blocks of {self.block_size}"
            )
        if self.extra_keys is not None and len(self.extra_keys) != n_blocks:
            raise ValueError(f"{len(self.extra_keys)} extra_keys entries for {n_blocks} blocks")
        # Signed int64 hashes to uint64 in place, inline: a helper call per event cost more
        # than the check. A list mixing ints and bytes fails in min(): the event is rejected.
        if n_blocks and type(hashes[0]) is int:
            if min(hashes) < 0:
                hashes[:] = [h & UINT64_MASK for h in hashes]
        elif not all(type(h) is bytes for h in hashes):  # bytes first, then an int: no min()
            raise ValueError(f"{Reason.HASH}: block hashes mix bytes and ints")
        parent = self.parent_block_hash
        if type(parent) is int and parent < 0:
            self.parent_block_hash = parent & UINT64_MASK


_TOKEN_LIST: Final = msgspec.msgpack.Decoder(list[int])


def encode_tokens(token_ids: Sequence[int]) -> msgspec.Raw:
    """``token_ids`` as ``BlockStored.token_ids`` holds them (checked when the record is built)."""
    ids = token_ids if isinstance(token_ids, list | tuple) else list(token_ids)
    return msgspec.Raw(msgspec.msgpack.encode(ids))


def token_list(event: BlockStored) -> list[int]:
    """The token ids of ``event`` as ints (a copy: the ingest path never needs this)."""
    return _TOKEN_LIST.decode(event.token_ids)


class BlockRemoved(msgspec.Struct, tag="BlockRemoved", tag_field="type", gc=False):
    """Blocks left the cache of this endpoint (in ``medium``, for ``group_idx``)."""

    block_hashes: list[WireHash]
    medium: str | None = None
    group_idx: int | None = None

    def __post_init__(self) -> None:
        # BlockStored's normalisation, inline. Most removals name one hash (vLLM's GPU pool
        # sends one event per evicted block): a comparison does there, min() (a call) only for
        # longer lists, where it also rejects a list mixing ints and bytes.
        hashes: list[Any] = self.block_hashes
        if hashes and type(first := hashes[0]) is int:
            if len(hashes) == 1:
                if first < 0:
                    hashes[0] = first & UINT64_MASK
            elif min(hashes) < 0:
                hashes[:] = [h & UINT64_MASK for h in hashes]
        elif not all(type(h) is bytes for h in hashes):  # bytes first, then an int: no min()
            raise ValueError(f"{Reason.HASH}: block hashes mix bytes and ints")


class AllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared", tag_field="type", gc=False):
    """The endpoint's prefix cache was reset: every block it held is gone."""


Event = BlockStored | BlockRemoved | AllBlocksCleared


_REMOVING_KINDS: Final = frozenset({"BlockRemoved", "AllBlocksCleared"})


@dataclass(frozen=True, slots=True)
class Rejection:
    """One event of a batch that could not be used; the rest of the batch still applies."""

    position: int
    reason: Reason
    detail: str
    # The event's type when it could still be read ("BlockRemoved", ...), else None: a removal
    # that was lost (or may have been) leaves holders that may be stale.
    kind: str | None = None

    @property
    def may_be_removal(self) -> bool:
        """True unless the event is known to remove nothing (a BlockStored, an unknown type)."""
        return self.kind is None or self.kind in _REMOVING_KINDS


class Batch(msgspec.Struct, frozen=True):
    """One published batch: everything an engine reported in one scheduler step.

    A frozen Struct rather than a frozen dataclass: built once per frame, in C (about 0.06 us
    against 0.6 us for the dataclass's field-by-field ``object.__setattr__``).
    """

    seq: int
    ts: float
    data_parallel_rank: int | None
    events: Sequence[Event]
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplayEnd:
    """The end marker of a replay reply (seq 0xFFFF_FFFF_FFFF_FFFF, empty payload)."""
