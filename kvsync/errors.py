"""The one exception tree of kvsync.

    KvsyncError
    ├── ConfigError        bad flag, env var or endpoint spec (the CLI exits 2)
    └── DecodeError        a ZMQ message that is not a valid KV-event frame (counted, skipped)

Library exceptions (msgspec, zmq, kubernetes) are wrapped at the edge that owns the library and
chained as ``__cause__``, so callers handle kvsync's errors only.
"""

import enum


class KvsyncError(Exception):
    """Base of every error kvsync raises on purpose."""


class ConfigError(KvsyncError):
    """Configuration that cannot be used; the message is one line for the user."""


class Reason(enum.StrEnum):
    """Why a frame or an event was rejected: the value is the metric label and the log field."""

    FRAMES = "frames"  # wrong number of frames
    SEQ = "seq"  # sequence frame is not 8 bytes
    PAYLOAD = "payload"  # not msgpack, or not a batch
    EVENT_TAG = "event_tag"  # an event whose type kvsync does not know
    EVENT_SHAPE = "event_shape"  # a field of the wrong type, or a required field missing
    TOKENS = "tokens"  # token ids out of [0, 2^32) or not n_blocks x block_size of them
    HASH = "hash"  # a block hash that is neither an int nor 8..32 bytes


class DecodeError(KvsyncError):
    """A frame kvsync cannot use. ``reason`` is a short, stable code."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
