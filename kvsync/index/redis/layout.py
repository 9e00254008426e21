"""Where the Redis backend keeps what, and how values are packed. Pure.

One endpoint's whole state lives in one hash slot, chosen by the endpoint's tag ``{t}`` (a hex
xxh3 of the endpoint id: pod names may hold any character, a hash tag may not hold ``}``):

* ``kvsync:{t}:m`` — a hash of the endpoint's metadata: ``gen`` (the fencing generation, raised by
  every claim), ``ident`` (the incarnation it belongs to), ``seq`` (the last seq whose batch is
  in, ``""`` for none), ``held`` (blocks held) and ``ctxs`` (its context tags, space-separated);
* ``kvsync:{t}:d:<context tag>`` — per context the endpoint stored into, a hash: block key
  (8 bytes, little endian) → value: the engine hash the block was stored under (8 bytes, little
  endian), then, unless the only copy held is the plain one (GPU, group 0), the mask of the
  copies held (2 more bytes);
* ``kvsync:{t}:s:<context tag>`` — the set of the block keys it holds (what a lookup reads:
  ``SMISMEMBER`` answers integers, no value is copied), and ``kvsync:{t}:o:<context tag>`` the
  set of those held in a copy other than the plain one (only for those does a lookup read the
  values, for their copy masks).

So one function call per batch writes the data and ``seq`` together (Redis runs a function
atomically, and a cluster keeps a slot on one node), a clear or a drop is ``UNLINK`` of the
endpoint's own keys (never a SCAN of the keyspace), and a lookup reads each endpoint with one
``SMISMEMBER`` per chunk of the query on the node that holds it (the set costs about 48 bytes per
block held beside the hash's ~80, and makes a lookup about 1.3x faster than ``HMGET`` on the
hash: BENCHMARKS.md ``## Redis backend``).

Two keys are shared by every writer and reader:

* ``kvsync:r:<model tag>`` — per (model, adapter), the endpoints holding blocks in one of its
  contexts: field ``<block size>|<endpoint tag>`` → the endpoint id (JSON ``[pod, rank]``). A
  superset: an entry is added before the data and removed after it, so a reader may meet an
  endpoint with nothing (it matches nothing), never miss one that holds blocks;
* ``kvsync:copies`` — the copy bits: field ``<medium>|<group>`` → bit number (``GPU|0`` is bit
  0, seeded by the function library; at most 16 copies in all).
"""

import base64
import struct
from typing import Final

import msgspec
import xxhash

from kvsync.model import EndpointId

PREFIX: Final = "kvsync:"
COPIES_KEY: Final = PREFIX + "copies"
MAX_COPY_BITS: Final = 16
PLAIN_BIT: Final = 1  # the mask of (GPU, group 0): bit 0, seeded by the library
KEY_BYTES: Final = 8
PLAIN_VALUE_BYTES: Final = 8  # engine hash; the copy mask is PLAIN_BIT
VALUE_BYTES: Final = 10  # engine hash (8) + copy mask (2)

Adapter = str | int | None
ContextKey = tuple[str, Adapter, int]  # (model, adapter, block size), as the memory backend's


def endpoint_json(endpoint: EndpointId) -> bytes:
    return msgspec.json.encode([endpoint.pod, endpoint.dp_rank])


def endpoint_from_json(raw: bytes) -> EndpointId:
    pod, rank = msgspec.json.decode(raw)
    return EndpointId(pod, rank)


def endpoint_tag(endpoint: EndpointId) -> str:
    return xxhash.xxh3_64_hexdigest(endpoint_json(endpoint))


def meta_key(tag: str) -> str:
    return f"{PREFIX}{{{tag}}}:m"


def data_key(tag: str, context_tag: str) -> str:
    return f"{PREFIX}{{{tag}}}:d:{context_tag}"


def held_key(tag: str, context_tag: str) -> str:
    return f"{PREFIX}{{{tag}}}:s:{context_tag}"


def _adapter_bytes(adapter: Adapter) -> bytes:
    # a name and an integer id never mean the same adapter (the memory backend keeps them apart)
    if adapter is None:
        return b"-"
    return (b"n:" + adapter.encode()) if isinstance(adapter, str) else b"i:%d" % adapter


def model_tag(model: str, adapter: Adapter) -> str:
    return xxhash.xxh3_64_hexdigest(msgspec.msgpack.encode(model) + _adapter_bytes(adapter))


def registry_key(model: str, adapter: Adapter) -> str:
    return f"{PREFIX}r:{model_tag(model, adapter)}"


def context_tag(context: ContextKey) -> str:
    """A reversible tag for a context: key names hold it, a restarted writer reads its contexts
    back from it (``ctxs``), and Lua splits ``ctxs`` on spaces (base64 has none)."""
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(context)).decode()


def context_from_tag(tag: str) -> ContextKey:
    model, adapter, block_size = msgspec.msgpack.decode(base64.urlsafe_b64decode(tag))
    return model, adapter, block_size


def registry_field(block_size: int, tag: str) -> str:
    return f"{block_size}|{tag}"


def parse_registry_field(field: bytes) -> tuple[int, str]:
    size, _, tag = field.decode().partition("|")
    return int(size), tag


def copy_field(medium: str, group: int) -> str:
    return f"{medium}|{group}"


def parse_copy_field(field: bytes) -> tuple[str, int]:
    medium, _, group = field.decode().rpartition("|")
    return medium, int(group)


def pack_keys(keys: list[int]) -> bytes:
    """Block keys as the fields of a data hash, concatenated (8 bytes each)."""
    return struct.pack(f"<{len(keys)}Q", *keys)


# A block's value in process is one int, ``engine hash | copy mask << 64``: its 10 bytes, little
# endian, are the value in Redis (the engine hash first, the mask in bytes 9 and 10), or its
# first 8 when the mask is the plain copy's.
ENGINE_MASK: Final = (1 << 64) - 1
_PLAIN_ONLY: Final = PLAIN_BIT << 64


def pack_writes(writes: dict[int, int | None]) -> tuple[bytes, bytes, bytes]:
    """(plain sets, other sets, dels) of one data hash as ``kvsync_apply`` reads them: 16-byte
    (key, engine hash) records, 18-byte (key, engine hash, mask) records, 8-byte keys."""
    plain, other, dels = bytearray(), bytearray(), bytearray()
    for key, value in writes.items():
        if value is None:
            dels += key.to_bytes(KEY_BYTES, "little")
        elif value >> 64 == PLAIN_BIT:
            plain += (key | (value & ENGINE_MASK) << 64).to_bytes(16, "little")
        else:
            other += key.to_bytes(KEY_BYTES, "little") + value.to_bytes(VALUE_BYTES, "little")
    return bytes(plain), bytes(other), bytes(dels)


def unpack_entry(field: bytes, value: bytes) -> tuple[int, int]:
    """A data hash entry as (key, packed value)."""
    packed = int.from_bytes(value, "little")
    if len(value) == PLAIN_VALUE_BYTES:
        packed |= _PLAIN_ONLY
    return int.from_bytes(field, "little"), packed
