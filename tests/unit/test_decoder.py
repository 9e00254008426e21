"""The decoder against real vLLM captures and every documented wire shape."""

from typing import Any

import msgspec
import pytest

from kvsync.errors import DecodeError, Reason
from kvsync.events import wire
from kvsync.events.decode import decode_live, decode_replay
from kvsync.model import (
    AllBlocksCleared,
    Batch,
    BlockRemoved,
    BlockStored,
    ReplayEnd,
    encode_tokens,
    token_list,
)
from tests import golden

CAPTURES = golden.all_captures()
_encode = msgspec.msgpack.encode


def _as_expected(event: Any) -> dict[str, Any]:
    """The fields kvsync models, in the shape of a capture's `expected` event."""
    match event:
        case BlockStored():
            return {
                "type": "BlockStored",
                "block_hashes": event.block_hashes,
                "parent_block_hash": event.parent_block_hash,
                "token_ids": token_list(event),
                "block_size": event.block_size,
                "lora_id": event.lora_id,
                "medium": event.medium,
                "lora_name": event.lora_name,
                "extra_keys": event.extra_keys,
                "group_idx": event.group_idx,
                "kv_cache_spec_kind": event.kv_cache_spec_kind,
            }
        case BlockRemoved():
            return {
                "type": "BlockRemoved",
                "block_hashes": event.block_hashes,
                "medium": event.medium,
                "group_idx": event.group_idx,
            }
        case AllBlocksCleared():
            return {"type": "AllBlocksCleared"}
    raise AssertionError(event)


def _normalised(expected: dict[str, Any]) -> dict[str, Any]:
    """An expected event reduced to the fields kvsync models, hashes parsed."""
    modelled = {k: expected.get(k) for k in _as_expected(_sample(expected["type"]))}
    if "block_hashes" in modelled:
        modelled["block_hashes"] = [golden.expected_hash(h) for h in expected["block_hashes"]]
    if modelled.get("parent_block_hash") is not None:
        modelled["parent_block_hash"] = golden.expected_hash(expected["parent_block_hash"])
    return modelled


def _sample(tag: str) -> Any:
    return {
        "BlockStored": BlockStored([], None, encode_tokens([]), 1),
        "BlockRemoved": BlockRemoved([]),
        "AllBlocksCleared": AllBlocksCleared(),
    }[tag]


def _check(batch: Batch, expected: dict[str, Any]) -> None:
    assert batch.seq == expected["seq"]
    assert batch.data_parallel_rank == expected["data_parallel_rank"]
    assert batch.rejected == ()
    assert [_as_expected(e) for e in batch.events] == [_normalised(e) for e in expected["events"]]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_every_live_frame_of_every_capture_decodes_to_its_expected_records(
    capture: golden.Capture,
) -> None:
    assert len(capture.live) == len(capture.expected) == 8
    for frames, expected in zip(capture.live, capture.expected, strict=True):
        _check(decode_live(frames), expected)


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_every_replay_reply_decodes_to_the_live_batch_then_the_end_marker(
    capture: golden.Capture,
) -> None:
    start = int.from_bytes(capture.replay_request[1], "big")
    *batches, end = [decode_replay(frames) for frames in capture.replay_reply]
    assert isinstance(end, ReplayEnd)
    by_seq = {e["seq"]: e for e in capture.expected}
    assert [b.seq for b in batches if isinstance(b, Batch)] == list(range(start, 8))
    for batch in batches:
        assert isinstance(batch, Batch)
        _check(batch, by_seq[batch.seq])


def test_reply_layout_follows_the_release() -> None:
    sizes = {c.name: len(c.replay_reply[0]) for c in CAPTURES}
    assert sizes["vllm-0.25.0"] == 3  # [b"", seq, payload] before 0.26
    assert sizes["vllm-0.33.0"] == 4  # [b"", topic, seq, payload] from 0.26


def test_signed_int64_hashes_are_normalised_to_uint64() -> None:
    capture = golden.load(golden.VECTORS / "vllm-0.10.1.json")
    signed = [int(h) for e in capture.expected for h in e["events"][0].get("block_hashes", [])]
    assert any(h < 0 for h in signed), "the 0.10.1 capture is expected to hold negative hashes"
    hashes = [h for f in capture.live for e in decode_live(f).events
              if isinstance(e, BlockStored) for h in e.block_hashes]  # fmt: skip
    assert all(isinstance(h, int) and 0 <= h < 1 << 64 for h in hashes)


def test_bytes_hashes_stay_bytes() -> None:
    capture = golden.load(golden.VECTORS / "vllm-0.33.0-bytes-hashes.json")
    first = decode_live(capture.live[0]).events[0]
    assert isinstance(first, BlockStored)
    assert all(isinstance(h, bytes) and len(h) == 32 for h in first.block_hashes)


# --- shapes that are documented but not in the captures -----------------------------------------


def _live(payload: Any, seq: int = 7) -> Batch:
    return decode_live([b"kv", wire.encode_seq(seq), _encode(payload)])


def test_vllm_0_9_batch_has_two_elements_and_five_field_events() -> None:
    batch = _live([1.5, [["BlockStored", [1, 2], None, [1, 2, 3, 4], 2, None]]])
    assert batch.data_parallel_rank is None
    (event,) = batch.events
    assert isinstance(event, BlockStored)
    assert event.block_hashes == [1, 2]
    assert event.medium is None


def test_array_events_from_a_future_release_ignore_extra_trailing_fields() -> None:
    future = ["BlockStored", [9], 8, [5, 6], 2, None, "CPU", None, [None], 1, "full", None, "x", 42]
    batch = _live([1.0, [future, ["BlockRemoved", [9], "CPU", 1, "LOCAL", "t", "more"]], 0])
    stored, removed = batch.events
    assert isinstance(stored, BlockStored)
    assert (stored.parent_block_hash, stored.medium, stored.group_idx) == (8, "CPU", 1)
    assert isinstance(removed, BlockRemoved)
    assert (removed.block_hashes, removed.group_idx) == ([9], 1)


def test_map_events_treat_missing_keys_as_null_and_ignore_unknown_keys() -> None:
    event = {"type": "BlockStored", "block_hashes": [3], "token_ids": [1], "block_size": 1,
             "parent_block_hash": None, "brand_new_field": {"nested": [1]}}  # fmt: skip
    (stored,) = _live([1.0, [event], 0]).events
    assert isinstance(stored, BlockStored)
    assert (stored.lora_name, stored.medium, stored.extra_keys) == (None, None, None)


def test_a_map_envelope_is_accepted() -> None:
    batch = _live({"ts": 2.0, "events": [{"type": "AllBlocksCleared"}], "data_parallel_rank": 3})
    assert batch.data_parallel_rank == 3
    assert isinstance(batch.events[0], AllBlocksCleared)


def test_sglang_map_event_cache_salt_becomes_block_zero_extra_key() -> None:
    sglang = {"type": "BlockStored", "block_hashes": [-5, 6], "parent_block_hash": None,
              "token_ids": [1, 2, 3, 4], "block_size": 2, "lora_id": None, "medium": "GPU",
              "cache_salt": "s1", "session_id": None, "lora_name": None}  # fmt: skip
    (stored,) = _live([1.0, [sglang], 0]).events
    assert isinstance(stored, BlockStored)
    assert stored.extra_keys == [["s1"], None]
    assert stored.block_hashes == [(1 << 64) - 5, 6]


def test_eras_mixed_in_one_batch_still_decode() -> None:
    batch = _live([1.0, [["AllBlocksCleared"], {"type": "BlockRemoved", "block_hashes": [1]}], 0])
    assert [type(e).__bases__[0] for e in batch.events] == [AllBlocksCleared, BlockRemoved]
    assert batch.rejected == ()


def test_one_malformed_event_does_not_lose_the_others() -> None:
    good = {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
            "token_ids": [1, 2], "block_size": 2, "lora_id": None, "medium": "GPU",
            "lora_name": None}  # fmt: skip
    bad = [
        {"type": "BlockEvicted", "block_hashes": [1]},
        {**good, "token_ids": [1, 2, 3]},
        {**good, "token_ids": [1, -2]},
        {**good, "token_ids": [1, 1 << 32]},
        {**good, "block_hashes": [b"short"]},
        {**good, "block_hashes": ["not-a-hash"]},
        {**good, "block_size": "16"},
        "just a string",
    ]
    events = [good, *bad, {"type": "AllBlocksCleared"}]
    batch = _live([1.0, events, 0])
    assert len(batch.events) == 2
    assert isinstance(batch.events[0], BlockStored)
    assert isinstance(batch.events[1], AllBlocksCleared)
    reasons = [(r.position, r.reason) for r in batch.rejected]
    assert reasons == [
        (1, Reason.EVENT_TAG),
        (2, Reason.TOKENS),
        (3, Reason.TOKENS),
        (4, Reason.TOKENS),
        (5, Reason.HASH),
        (6, Reason.HASH),
        (7, Reason.EVENT_SHAPE),
        (8, Reason.EVENT_SHAPE),
    ]


def test_a_malformed_array_event_is_rejected_alone() -> None:
    batch = _live([1.0, [["BlockRemoved", [1]], ["BlockStored", [1], None, [1, 2, 3], 2]], 0])
    assert len(batch.events) == 1
    assert [r.reason for r in batch.rejected] == [Reason.TOKENS]


_BAD_TOKEN_IDS = [
    [1, 2, 3],  # not n_blocks x block_size
    [1, -2],
    [-(1 << 63), 1],  # int64 width
    [1, 1 << 32],
    [1, (1 << 64) - 1],  # uint64 width
    [1, "2"],
    [1, 2.0],
    [1, True],
    [1, None],
    [1, [2]],
    "12",
    None,
    {"0": 1, "1": 2},
]


@pytest.mark.parametrize("tokens", _BAD_TOKEN_IDS, ids=repr)
@pytest.mark.parametrize("layout", ["array", "map"])
def test_bad_token_ids_are_a_tokens_rejection_in_both_layouts(tokens: Any, layout: str) -> None:
    if layout == "array":
        bad: Any = ["BlockStored", [1], None, tokens, 2, None, "GPU"]
    else:
        bad = {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
               "token_ids": tokens, "block_size": 2}  # fmt: skip
    batch = _live([1.0, [["AllBlocksCleared"], bad, ["BlockRemoved", [1]]], 0])
    assert len(batch.events) == 2
    assert [(r.position, r.reason) for r in batch.rejected] == [(1, Reason.TOKENS)]
    assert batch.rejected[0].detail.startswith("tokens:")


def test_token_ids_stay_msgpack_and_read_back_exactly() -> None:
    ids = [0, 1, 127, 128, 255, 256, 65_535, 65_536, (1 << 32) - 1]
    (stored,) = _live([1.0, [["BlockStored", [1, 2, 3], None, ids, 3]], 0]).events
    assert isinstance(stored, BlockStored)
    assert isinstance(stored.token_ids, msgspec.Raw)  # no Python int per token on ingest
    assert bytes(stored.token_ids) == _encode(ids)
    assert token_list(stored) == ids


def test_a_record_built_in_python_is_validated_the_same_way() -> None:
    stored = BlockStored([1, 2], None, encode_tokens(range(4)), 2)
    assert token_list(stored) == [0, 1, 2, 3]
    assert stored == BlockStored([1, 2], None, encode_tokens((0, 1, 2, 3)), 2)
    with pytest.raises(ValueError, match=r"^tokens: 3 token ids for 2 blocks of 2$"):
        BlockStored([1, 2], None, encode_tokens([1, 2, 3]), 2)
    with pytest.raises(ValueError, match=r"^tokens: "):
        BlockStored([1], None, encode_tokens([1, -2]), 2)
    with pytest.raises(ValueError, match=r"^tokens: "):
        BlockStored([1], None, encode_tokens([1, 1 << 32]), 2)
    with pytest.raises(TypeError):  # a plain list is a mistake, not silently accepted
        BlockStored([1], None, [1, 2], 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"topic", wire.encode_seq(1)], Reason.FRAMES),
        ([b"t", wire.encode_seq(1), b"\x90", b"extra"], Reason.FRAMES),
        ([b"topic", b"\x00\x01", _encode([1.0, [], 0])], Reason.SEQ),
        ([b"topic", wire.encode_seq(1), b"\xc1"], Reason.PAYLOAD),
        ([b"topic", wire.encode_seq(1), b""], Reason.PAYLOAD),
        ([b"topic", wire.encode_seq(1), _encode("not a batch")], Reason.PAYLOAD),
        ([b"topic", wire.encode_seq(1), _encode([1.0, "events", 0])], Reason.PAYLOAD),
    ],
)
def test_unusable_live_messages_raise_decode_error_with_a_reason(
    frames: list[bytes], reason: Reason
) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_live(frames)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([b"x", wire.encode_seq(1), _encode([1.0, [], 0])], Reason.FRAMES),
        ([b"", wire.END_SEQ, b"\x90"], Reason.SEQ),
        ([b"", b"topic", b"\x01", _encode([1.0, [], 0])], Reason.SEQ),
        ([b""], Reason.FRAMES),
    ],
)
def test_unusable_replay_replies_raise_decode_error(frames: list[bytes], reason: Reason) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_replay(frames)
    assert caught.value.reason is reason


def test_both_end_marker_layouts_end_the_replay() -> None:
    assert isinstance(decode_replay([b"", wire.END_SEQ, b""]), ReplayEnd)
    assert isinstance(decode_replay([b"", b"", wire.END_SEQ, b""]), ReplayEnd)


def test_the_largest_sequence_number_below_the_end_marker_is_a_batch() -> None:
    seq = (1 << 64) - 2
    batch = decode_replay([b"", wire.encode_seq(seq), _encode([1.0, [], 0])])
    assert isinstance(batch, Batch)
    assert batch.seq == seq


# --- poison frames: no input escapes the decoder ------------------------------------------------

_GOOD_MAP = {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None,
             "token_ids": [1, 2], "block_size": 2}  # fmt: skip


def _deep(levels: int) -> msgspec.Raw:
    """``levels`` nested one-element arrays: msgspec raises RecursionError near 1,000."""
    return msgspec.Raw(b"\x91" * levels + b"\x00")


@pytest.mark.parametrize("where", ["extra_keys", "unknown_key", "batch_envelope", "event_list"])
def test_deep_nesting_anywhere_is_a_nesting_decode_error_with_the_seq(where: str) -> None:
    deep = _deep(5_000)
    if where == "extra_keys":
        payload = [1.0, [{**_GOOD_MAP, "extra_keys": [[deep]]}], 0]
    elif where == "unknown_key":
        payload = [1.0, [{**_GOOD_MAP, "future": deep}], 0]
    elif where == "batch_envelope":
        payload = [1.0, [], 0, deep]
    else:
        payload = [1.0, [deep], 0]
    # msgspec skips (and checks the depth of) every value, even one it ignores: the whole
    # message is unusable, and the handler must know its seq to place the loss in the stream.
    with pytest.raises(DecodeError) as caught:
        _live(payload, seq=41)
    assert (caught.value.reason, caught.value.seq) == (Reason.NESTING, 41)
    with pytest.raises(DecodeError) as caught:
        decode_replay([b"", wire.encode_seq(41), _encode(payload)])
    assert (caught.value.reason, caught.value.seq) == (Reason.NESTING, 41)


def test_nesting_below_the_limit_in_an_unknown_key_still_decodes() -> None:
    batch = _live([1.0, [{**_GOOD_MAP, "future": _deep(200)}], 0])
    assert len(batch.events) == 1


def test_rejections_name_the_event_type_when_it_can_be_read() -> None:
    bad_removed = {"type": "BlockRemoved", "block_hashes": ["x"]}
    bad_array = ["BlockRemoved", ["x"]]
    bad_stored = {**_GOOD_MAP, "token_ids": [1]}
    batch = _live([1.0, [bad_removed, bad_stored, {"type": 7}, "junk", _GOOD_MAP], 0])
    kinds = [(r.position, r.kind, r.may_be_removal) for r in batch.rejected]
    assert kinds == [
        (0, "BlockRemoved", True),
        (1, "BlockStored", False),
        (2, None, True),
        (3, None, True),
    ]
    (rejected,) = _live([1.0, [bad_array, ["AllBlocksCleared"]], 0]).rejected
    assert (rejected.kind, rejected.may_be_removal) == ("BlockRemoved", True)


def test_64_byte_hashes_of_merged_groups_are_accepted() -> None:
    h64 = bytes(range(64))
    removed = {"type": "BlockRemoved", "block_hashes": [h64]}
    batch = _live([1.0, [{**_GOOD_MAP, "block_hashes": [h64]}, removed], 0])
    assert [getattr(e, "block_hashes", None) for e in batch.events] == [[h64], [h64]]
    assert not batch.rejected
    (too_long,) = _live([1.0, [{**_GOOD_MAP, "block_hashes": [bytes(65)]}], 0]).rejected
    assert too_long.reason is Reason.HASH


@pytest.mark.parametrize("hashes", [[bytes(8), -1], [bytes(8), 5], [b"\x01" * 32, 1 << 63]])
def test_a_hash_list_of_bytes_then_ints_is_a_hash_rejection(hashes: list[Any]) -> None:
    stored = {**_GOOD_MAP, "block_hashes": hashes, "token_ids": [1, 2] * len(hashes)}
    removed = {"type": "BlockRemoved", "block_hashes": hashes}
    batch = _live([1.0, [stored, removed], 0])
    assert [(r.reason, r.kind) for r in batch.rejected] == [
        (Reason.HASH, "BlockStored"),
        (Reason.HASH, "BlockRemoved"),
    ]


def test_an_absurd_block_size_is_rejected() -> None:
    (rejected,) = _live([1.0, [{**_GOOD_MAP, "block_hashes": [], "token_ids": [],
                                "block_size": 1 << 40}], 0]).rejected  # fmt: skip
    assert rejected.reason is Reason.EVENT_SHAPE
