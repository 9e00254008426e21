"""What a simulated publisher's callers hand its thread, and the counters they read back.

``kvsync.sim.publisher`` turns each public call into one ``Command`` on a queue; its thread handles
them in order (a batch to send, a fault knob to set, raw or malformed frames, a restart, stop).
``PublisherStats`` is the snapshot ``Publisher.stats`` returns. Plain immutable values, no I/O:
any thread may create and read them; nothing here raises.
"""

from dataclasses import dataclass

from kvsync.sim.sockets import Malformed


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """Counters since start (``restart`` does not reset them)."""

    next_seq: int
    sent: int  # live batches sent
    dropped: int  # batches whose seq was consumed without a live send
    malformed: int
    replays: int  # replay requests answered
    bad_replay_requests: int
    subscriptions: int  # XPUB subscription messages seen
    buffered: int  # batches in the replay buffer now


@dataclass(frozen=True, slots=True)
class SendBatch:
    payload: bytes
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class DropNext:
    count: int
    replayable: bool


@dataclass(frozen=True, slots=True)
class SetReplayCapacity:
    batches: int


@dataclass(frozen=True, slots=True)
class SendFrames:
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class SendMalformed:
    kind: Malformed


class Restart:
    pass


class Stop:
    pass


Command = SendBatch | DropNext | SetReplayCapacity | SendFrames | SendMalformed | Restart | Stop
