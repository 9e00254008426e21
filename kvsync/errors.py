"""The one exception tree of kvsync.

    KvsyncError
    ├── ConfigError        bad flag, env var or endpoint spec (the CLI exits 2)
    ├── DecodeError        a ZMQ message that is not a valid KV-event frame (counted, skipped)
    ├── IndexUnavailableError  the index backend cannot answer now (Redis unreachable: 503)
    └── LoadError          an engine's /metrics that could not be read or used (counted, marked)

Library exceptions (msgspec, zmq, kubernetes, redis) are wrapped at the edge that owns the
library and chained as ``__cause__``, so callers handle kvsync's errors only.
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
    HASH = "hash"  # a block hash that is neither an int nor 8..64 bytes
    # nested deeper than msgspec decodes (it raises RecursionError at about 1,000 levels)
    NESTING = "nesting"
    INTERNAL = "internal"  # any other exception while decoding: a bug, but never a crash


class DecodeError(KvsyncError):
    """A frame kvsync cannot use. ``reason`` is a short, stable code; ``seq`` is the message's
    sequence number when its seq frame was readable (the payload was not)."""

    def __init__(self, reason: Reason, detail: str, seq: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.seq = seq


class IndexUnavailableError(KvsyncError):
    """The index backend cannot answer or take writes now (Redis unreachable, a failover in
    progress); the message says why. Lookups answer 503 with it; writes are kept and retried."""


class LoadReason(enum.StrEnum):
    """Why an engine's ``/metrics`` scrape failed: the metric label and the state's detail."""

    TIMEOUT = "timeout"  # no whole answer within --load-timeout-seconds
    UNREACHABLE = "unreachable"  # connection refused, reset or closed early
    HTTP_STATUS = "http_status"  # an answer other than 200
    BAD_HTTP = "bad_http"  # not HTTP/1.1, or a body over the size limit
    NOT_VLLM = "not_vllm"  # no vllm:num_requests_running / _waiting in the text
    UNPARSABLE = "unparsable"  # prometheus-client's parser rejected the text
    BAD_VALUE = "bad_value"  # NaN, infinite or negative figure; an engine label not a rank
    INTERNAL = "internal"  # any other exception while scraping: a bug, but never a crash


class LoadError(KvsyncError):
    """An engine's ``/metrics`` could not be used; ``reason`` is a ``LoadReason``."""

    def __init__(self, reason: LoadReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
