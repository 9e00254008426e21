"""The simulator's era encoders write the bytes real vLLM publishers wrote (golden captures)."""

import struct
from typing import Any

import pytest

from kvsync import model
from kvsync.errors import Reason
from kvsync.events.decode import decode_payload
from kvsync.sim import Era, HashFormat, SimError, eras
from tests import golden

ERA_OF_VERSION = {
    "0.10.1": Era.V0_10_1,
    "0.17.0": Era.V0_17,
    "0.23.0": Era.V0_23,
    "0.25.0": Era.V0_25,
    "0.33.0": Era.V0_33,
}
HASHES_OF_ENCODING = {
    "int64": HashFormat.INT64,
    "uint64": HashFormat.UINT64,
    "bytes32": HashFormat.BYTES,
}
CAPTURES = golden.all_captures()


def era_of(capture: golden.Capture) -> tuple[Era, HashFormat]:
    doc = capture.doc
    return ERA_OF_VERSION[doc["vllm_version"]], HASHES_OF_ENCODING[doc["hash_encoding"]]


def scenario_events(capture: golden.Capture) -> list[list[model.Event]]:
    """The golden scenario as kvsync records, with the hashes the capture expects."""
    batches: list[list[model.Event]] = []
    size = capture.block_size
    for expected, scripted in zip(
        capture.expected, capture.doc["scenario"]["batches"], strict=True
    ):
        events: list[model.Event] = []
        for want, script in zip(expected["events"], scripted["events"], strict=True):
            events.append(_event(want, script, size))
        batches.append(events)
    return batches


def _event(want: dict[str, Any], script: dict[str, Any], size: int) -> model.Event:
    if want["type"] == "AllBlocksCleared":
        return model.AllBlocksCleared()
    hashes = [golden.expected_hash(h) for h in want["block_hashes"]]
    if want["type"] == "BlockRemoved":
        return model.BlockRemoved(hashes, model.GPU, 0)
    parent = want["parent_block_hash"]
    return model.BlockStored(
        block_hashes=hashes,
        parent_block_hash=None if parent is None else golden.expected_hash(parent),
        token_ids=model.encode_tokens(script["token_ids"]),
        block_size=size,
        lora_id=script.get("lora_id"),
        medium=model.GPU,
        lora_name=script.get("lora_name"),
        extra_keys=script.get("extra_keys") or [None] * len(hashes),
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )


def captured_ts(payload: bytes) -> float:
    """The float64 timestamp right after the fixarray(3) header: ``93 cb <8 bytes>``."""
    assert payload[:2] == b"\x93\xcb"
    return float(struct.unpack(">d", payload[2:10])[0])


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_encoded_payloads_are_the_captured_bytes(capture: golden.Capture) -> None:
    era, hashes = era_of(capture)
    for frames, expected, events in zip(
        capture.live, capture.expected, scenario_events(capture), strict=True
    ):
        payload = eras.encode_batch(
            era,
            events,
            ts=captured_ts(frames[2]),
            dp_rank=expected["data_parallel_rank"],
            hashes=hashes,
        )
        assert payload == frames[2], f"seq {expected['seq']}"


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_replay_frames_have_the_captured_layout(capture: golden.Capture) -> None:
    era, _ = era_of(capture)
    topic = capture.doc["topic"].encode()
    *batches, end = capture.replay_reply
    for reply in batches:
        seq = int.from_bytes(reply[-2], "big")
        assert eras.replay_message(era, topic, seq, reply[-1]) == reply
    assert eras.replay_end(era) == end


@pytest.mark.parametrize(
    ("value", "hashes", "wire"),
    [
        (b"\x00" * 24 + b"\xff" * 8, HashFormat.UINT64, (1 << 64) - 1),
        (b"\x00" * 24 + b"\xff" * 8, HashFormat.INT64, -1),
        (b"\x07" * 32, HashFormat.BYTES, b"\x07" * 32),
        ((1 << 64) - 2, HashFormat.INT64, -2),
        (-2, HashFormat.UINT64, (1 << 64) - 2),
    ],
)
def test_wire_hash_conversions(value: int | bytes, hashes: HashFormat, wire: int | bytes) -> None:
    assert eras.wire_hash(value, hashes) == wire


def test_impossible_hash_combinations_are_refused() -> None:
    with pytest.raises(SimError):
        eras.wire_hash(5, HashFormat.BYTES)
    with pytest.raises(SimError, match=r"0\.10\.1"):
        eras.encode_batch(
            Era.V0_10_1, [model.AllBlocksCleared()], ts=0.0, dp_rank=0, hashes=HashFormat.BYTES
        )


@pytest.mark.parametrize("era", list(Era))
def test_bad_event_is_rejected_alone_by_the_decoder(era: Era) -> None:
    good = model.BlockRemoved([b"\x02" * 32], model.GPU, 0)
    payload = eras.encode_batch(
        era, [good, eras.bad_event(era, 4), good], ts=1.0, dp_rank=0, hashes=era.default_hashes
    )
    batch = decode_payload(9, payload)
    assert len(batch.events) == 2
    assert [(r.position, r.reason) for r in batch.rejected] == [(1, Reason.TOKENS)]


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_pre_encoded_events_give_the_same_payload(capture: golden.Capture) -> None:
    era, hashes = era_of(capture)
    for events in scenario_events(capture):
        raw = [eras.raw_event(era, e, hashes) for e in events]
        ts = 1.5
        direct = eras.encode_batch(era, events, ts=ts, dp_rank=1, hashes=hashes)
        assert eras.encode_batch(era, raw, ts=ts, dp_rank=1, hashes=hashes) == direct
