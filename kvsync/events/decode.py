"""ZMQ frames → ``model.Batch``. Pure: no sockets, logging or metrics.

Raises ``DecodeError`` (with a ``Reason``, and the seq when it was readable) for a message that
cannot be used at all. A batch whose envelope is fine but some events are not still yields its
good events, with a ``Rejection`` for each bad one (with the event's type when it can still be
read). Nothing else escapes: any exception while decoding is wrapped, not only msgspec's errors —
msgspec raises ``RecursionError`` on about 1,000 levels of nesting (anywhere, even inside a key
it skips), and one such frame used to end the ingest thread.

Speed: a whole batch is first decoded in one msgspec call with the layout its first event shows
(array era or map era). Only when that fails (a bad event, or eras mixed in one batch) is the batch
decoded again event by event, which isolates the bad ones.
"""

import re
from collections.abc import Sequence
from typing import Final

import msgspec

from kvsync.errors import DecodeError, Reason
from kvsync.events import wire
from kvsync.model import Batch, Event, Rejection, ReplayEnd

_ARRAY_BATCH: Final = msgspec.msgpack.Decoder(wire.ArrayBatch)
_MAP_BATCH: Final = msgspec.msgpack.Decoder(wire.MapBatch)
_FAST_ARRAYS: Final = msgspec.msgpack.Decoder(wire.ArrayBatchOfArrays)
_FAST_MAPS: Final = msgspec.msgpack.Decoder(wire.ArrayBatchOfMaps)
_ARRAY_EVENT: Final[msgspec.msgpack.Decoder[wire.ArrayEvent]] = msgspec.msgpack.Decoder(
    wire.ArrayEvent
)
_MAP_EVENT: Final[msgspec.msgpack.Decoder[wire.MapEvent]] = msgspec.msgpack.Decoder(wire.MapEvent)


class _MapTag(msgspec.Struct):
    """Only the tag of a map-era event (the rest skipped): what a rejected event was."""

    type: object = None


class _ArrayTag(msgspec.Struct, array_like=True):
    """Only the tag of an array-era event (trailing fields ignored)."""

    type: object = None


_MAP_TAG: Final = msgspec.msgpack.Decoder(_MapTag)
_ARRAY_TAG: Final = msgspec.msgpack.Decoder(_ArrayTag)

_FIXARRAY_2_OR_3: Final = (0x92, 0x93)
_FLOAT64: Final = 0xCB

# Which field a msgspec error path points at: maps name it, arrays give its position (tag at 0).
# Token ids are a msgspec.Raw, so msgspec itself never fails on them: every token error (bad id,
# not an array, wrong count, in either layout) is BlockStored.__post_init__'s "tokens: ...".
_TOKENS_PATH: Final = re.compile(r"^tokens:")
_HASH_PATH: Final = re.compile(r"^hash:|`\$(\.block_hashes|\.parent_block_hash|\[1\]|\[2\])")
_TAG_PATH: Final = re.compile(
    r"Invalid value .* - at `\$(\.type|\[0\])`$|Expected `str`.*`\$\[0\]`$"
)


def _first_event_marker(payload: bytes) -> int | None:
    """The msgpack marker byte of the first event, for the common ``[f64, [...], rank]`` batch."""
    if len(payload) < 12 or payload[0] not in _FIXARRAY_2_OR_3 or payload[1] != _FLOAT64:
        return None
    header = payload[10]
    if 0x91 <= header <= 0x9F:
        offset = 11
    elif header == 0xDC:
        offset = 13
    elif header == 0xDD:
        offset = 15
    else:
        return None
    return payload[offset] if offset < len(payload) else None


def _event_reason(exc: Exception) -> Reason:
    if isinstance(exc, RecursionError):
        return Reason.NESTING
    if not isinstance(exc, msgspec.DecodeError | UnicodeDecodeError):
        # msgspec raises UnicodeDecodeError (not a DecodeError) for a str that is not UTF-8
        # inside a tagged struct; anything else is unexpected, and still only this event's.
        return Reason.INTERNAL
    message = str(exc)
    if _TOKENS_PATH.search(message):
        return Reason.TOKENS
    if _HASH_PATH.search(message):
        return Reason.HASH
    if _TAG_PATH.search(message):
        return Reason.EVENT_TAG
    return Reason.EVENT_SHAPE


def _event_kind(raw: msgspec.Raw) -> str | None:
    """The type tag of an event that failed to decode, if it can still be read."""
    view = memoryview(raw)
    decoder = _MAP_TAG if view and view[0] in wire.MAP_MARKERS else _ARRAY_TAG
    try:
        tag = decoder.decode(raw).type
    except Exception:  # noqa: BLE001  # unreadable: the caller assumes the worst
        return None
    return tag if isinstance(tag, str) else None


def _decode_event(raw: msgspec.Raw) -> Event:
    view = memoryview(raw)
    if not view:
        raise msgspec.ValidationError("empty event")
    if view[0] in wire.MAP_MARKERS:
        return _MAP_EVENT.decode(raw)
    if view[0] in wire.ARRAY_MARKERS:
        return _ARRAY_EVENT.decode(raw)
    raise msgspec.ValidationError("an event must be an array or a map")


def decode_payload(seq: int, payload: bytes) -> Batch:
    """Decode one msgpack batch; see the module docstring for what is raised and returned."""
    marker = _first_event_marker(payload)
    fast = (
        _FAST_MAPS
        if marker in wire.MAP_MARKERS
        else _FAST_ARRAYS
        if marker in wire.ARRAY_MARKERS
        else None
    )
    if fast is not None:
        try:
            whole = fast.decode(payload)
        except Exception:  # noqa: BLE001, S110  # any failure: decoded again below, event by
            pass  # event, to keep the good ones and name the bad ones
        else:
            return Batch(seq, whole.ts, whole.data_parallel_rank, whole.events)
    envelope = _MAP_BATCH if payload[:1] and payload[0] in wire.MAP_MARKERS else _ARRAY_BATCH
    try:
        batch = envelope.decode(payload)
    except RecursionError as exc:
        raise DecodeError(Reason.NESTING, str(exc), seq) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(Reason.PAYLOAD, str(exc), seq) from exc
    except Exception as exc:  # the ingest loop survives every input
        raise DecodeError(Reason.INTERNAL, f"{type(exc).__name__}: {exc}", seq) from exc
    events: list[Event] = []
    rejected: list[Rejection] = []
    for position, raw in enumerate(batch.events):
        try:
            events.append(_decode_event(raw))
        except Exception as exc:  # noqa: BLE001  # counted by reason, the rest still applies
            reason = _event_reason(exc)
            rejected.append(Rejection(position, reason, str(exc), _event_kind(raw)))
    return Batch(seq, batch.ts, batch.data_parallel_rank, events, tuple(rejected))


def _seq(frame: bytes) -> int:
    if len(frame) != wire.SEQ_BYTES:
        raise DecodeError(Reason.SEQ, f"sequence frame has {len(frame)} bytes, expected 8")
    return int.from_bytes(frame, "big")


def decode_live(frames: Sequence[bytes]) -> Batch:
    """A live message: ``[topic, seq, payload]``."""
    if len(frames) != 3:
        raise DecodeError(Reason.FRAMES, f"live message has {len(frames)} frames, expected 3")
    return decode_payload(_seq(frames[1]), frames[2])


def decode_replay(frames: Sequence[bytes]) -> Batch | ReplayEnd:
    """A reply to a DEALER replay request.

    ``[b"", seq, payload]`` before vLLM 0.26, ``[b"", topic, seq, payload]`` from 0.26: drop the
    empty delimiter, then the last two frames are seq and payload. Seq 2^64-1 with an empty
    payload ends the replay.
    """
    if len(frames) not in (3, 4) or frames[0]:
        sizes = [len(f) for f in frames]
        raise DecodeError(
            Reason.FRAMES, f"replay reply frame sizes {sizes}, expected [0, (topic,) 8, n]"
        )
    seq_frame, payload = frames[-2], frames[-1]
    if seq_frame == wire.END_SEQ:
        if payload:
            raise DecodeError(Reason.SEQ, "end-of-replay seq with a non-empty payload")
        return ReplayEnd()
    return decode_payload(_seq(seq_frame), payload)
