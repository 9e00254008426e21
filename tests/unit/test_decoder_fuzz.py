"""Bad input is data: whatever the bytes, the decoder returns records or raises DecodeError.

Over 20,000 cases run in CI: hypothesis-generated frames and payloads, plus deterministic
mutations of the golden vLLM captures (truncation, bit flips, inserted and deleted bytes, frames
added and removed, values of the wrong type swapped into real events).
"""

import contextlib
import random
from collections.abc import Callable
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvsync.errors import DecodeError
from kvsync.events import wire
from kvsync.events.decode import decode_live, decode_replay
from kvsync.model import (
    TOKEN_LIMIT,
    AllBlocksCleared,
    Batch,
    BlockRemoved,
    BlockStored,
    ReplayEnd,
    token_list,
)
from tests import golden

MUTATIONS = 20_000
FUZZ = settings(max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=40)
    | st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "type", "GPU"])
)
msgpack_values = st.recursive(
    _leaves,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=30,
)


def _assert_valid(result: Batch | ReplayEnd) -> None:
    """Whatever decodes must satisfy the invariants the index relies on."""
    if isinstance(result, ReplayEnd):
        return
    for event in result.events:
        match event:
            case BlockStored():
                tokens = token_list(event)
                assert len(tokens) == len(event.block_hashes) * event.block_size
                assert all(0 <= t < TOKEN_LIMIT for t in tokens)
                assert all(isinstance(h, bytes) or 0 <= h < 1 << 64 for h in event.block_hashes)
            case BlockRemoved():
                assert all(isinstance(h, bytes) or 0 <= h < 1 << 64 for h in event.block_hashes)
            case AllBlocksCleared():
                pass


def _decode_both_ways(frames: list[bytes]) -> None:
    for decode in (decode_live, decode_replay):
        with contextlib.suppress(DecodeError):
            _assert_valid(decode(frames))


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=5))
def test_arbitrary_frames_raise_only_decode_error(frames: list[bytes]) -> None:
    _decode_both_ways(frames)


@FUZZ
@given(msgpack_values)
def test_arbitrary_msgpack_payloads_raise_only_decode_error(value: Any) -> None:
    _decode_both_ways([b"topic", wire.encode_seq(1), msgspec.msgpack.encode(value)])


_field_values = (
    _leaves | st.lists(_leaves, max_size=6) | st.lists(st.integers(-3, 1 << 33), max_size=9)
)
_fields = st.lists(_field_values, max_size=14)
_array_events = st.builds(
    lambda tag, fields: [tag, *fields],
    st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"]),
    _fields,
)
_map_events = st.builds(
    lambda tag, fields: {"type": tag, **fields},
    st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"]),
    st.dictionaries(
        st.sampled_from(["block_hashes", "parent_block_hash", "token_ids", "block_size",
                         "lora_id", "medium", "lora_name", "extra_keys", "group_idx", "x"]),
        _field_values,
    ),
)  # fmt: skip


@FUZZ
@given(st.lists(_array_events | _map_events, max_size=5))
def test_random_events_in_a_valid_envelope_are_kept_or_rejected(events: list[Any]) -> None:
    payload = msgspec.msgpack.encode([1.0, events, 0])
    batch = decode_live([b"", wire.encode_seq(3), payload])
    assert len(batch.events) + len(batch.rejected) == len(events)
    _assert_valid(batch)


def _swap_a_value(value: Any, rng: random.Random) -> Any:
    """Replace one random node of a decoded payload by a value of another type."""
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = rng.randrange(len(value))
        return [*value[:i], _swap_a_value(value[i], rng), *value[i + 1 :]]
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        return {**value, key: _swap_a_value(value[key], rng)}
    return rng.choice([None, -1, 1 << 63, 1.5, "x", b"\x00" * 3, [], {}, [1, 2], True])


def _mutations(rng: random.Random) -> list[Callable[[list[bytes]], list[bytes]]]:
    def truncate(f: list[bytes]) -> list[bytes]:
        i = rng.randrange(len(f))
        return [*f[:i], f[i][: rng.randrange(len(f[i]) + 1)], *f[i + 1 :]]

    def flip(f: list[bytes]) -> list[bytes]:
        i = max(range(len(f)), key=lambda k: len(f[k]))
        data = bytearray(f[i])
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return [*f[:i], bytes(data), *f[i + 1 :]]

    def insert(f: list[bytes]) -> list[bytes]:
        data = bytearray(f[-1])
        data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        return [*f[:-1], bytes(data)]

    def delete(f: list[bytes]) -> list[bytes]:
        data = bytearray(f[-1])
        if data:
            del data[rng.randrange(len(data))]
        return [*f[:-1], bytes(data)]

    def add_frame(f: list[bytes]) -> list[bytes]:
        return [*f, rng.randbytes(rng.randrange(9))]

    def drop_frame(f: list[bytes]) -> list[bytes]:
        i = rng.randrange(len(f))
        return f[:i] + f[i + 1 :]

    def wrong_type(f: list[bytes]) -> list[bytes]:
        value = msgspec.msgpack.decode(f[-1]) if f[-1] else []
        return [*f[:-1], msgspec.msgpack.encode(_swap_a_value(value, rng))]

    return [truncate, flip, insert, delete, add_frame, drop_frame, wrong_type]


def test_mutated_golden_frames_raise_only_decode_error() -> None:
    rng = random.Random(20261122)
    captures = golden.all_captures()
    originals = [f for c in captures for f in (*c.live, *c.replay_reply)]
    mutations = _mutations(rng)
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(MUTATIONS):
        frames = rng.choice(mutations)(rng.choice(originals))
        for decode in (decode_live, decode_replay):
            try:
                _assert_valid(decode(frames))
                outcomes["decoded"] += 1
            except DecodeError:
                outcomes["rejected"] += 1
    assert sum(outcomes.values()) == 2 * MUTATIONS
    assert outcomes["decoded"] > 0
    assert outcomes["rejected"] > 0
