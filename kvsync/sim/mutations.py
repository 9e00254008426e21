"""Deterministic hostile frames for fuzzing a live ingest: mutations of real vLLM messages. Pure.

``Mutator`` turns seed messages (live ``[topic, seq, payload]`` frames: the golden captures in
tests/data/vectors, or ``era_seeds``, which encodes simulated traffic in every vLLM layout of
``kvsync.sim.eras``) into an endless stream of mutants, each labelled with its ``Kind``. The
same seeds and the same ``seed`` give the same stream, byte for byte, so a failure seen in a
campaign of a million frames is replayed by rerunning it with that seed (``Mutant.number`` tells
how far in). Nothing here touches a socket or a clock; ``kvsync.sim.fuzz_publisher`` puts the
mutants on the wire.

What the mutants are (``Kind``): blind byte-level damage (bit flips, truncation, spliced or
random bytes); structure-aware edits of the decoded seed (deep nesting of 1,000-5,000 msgpack
levels in ``extra_keys``, under an unknown map key or trailing array field, or in another known
field; ints replaced by huge, negative or float values; values of the wrong type; oversized
arrays, real or only claimed by a header); frame-level damage (1, 2, 4 or 5 frames, a seq frame
that is not 8 bytes); and valid payloads whose seq jumps forward or back. Live seqs count from 0
like a publisher's, so most mutants arrive in order and reach the handler's rules rather than
the gap path only. ``replay_answer`` builds the (equally hostile) answer to a replay request.

Raises ``ValueError`` for seeds it cannot use (none, or a payload that is not msgpack).
"""

import enum
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from kvsync import model
from kvsync.events import wire
from kvsync.sim import eras
from kvsync.sim.engine import Engine
from kvsync.sim.records import Adapter
from kvsync.sim.workload import Mix, PromptLibrary, Workload

Path = tuple[int | str, ...]  # list positions and map keys from the payload's root to a node

SEQ_SPACE: Final = 1 << 64
DEPTH_RANGE: Final = (1_000, 5_000)  # msgspec gives up (RecursionError) at about 1,000
# Ints that sit at the edges of what msgpack and kvsync's types hold.
HUGE_INTS: Final = (
    (1 << 64) - 1,
    1 << 63,
    (1 << 63) - 1,
    1 << 32,
    (1 << 32) - 1,
    model.MAX_BLOCK_SIZE + 1,
)
NEGATIVE_INTS: Final = (-1, -2, -(1 << 31), -(1 << 32), -(1 << 63))
FLOATS: Final = (0.0, -0.0, 4.0, 16.0, 1.5, 1e300, -1e300, float("nan"), float("inf"))
WRONG_VALUES: Final[tuple[object, ...]] = (
    None, True, False, 0, -1, 1.5, "", "x", "BlockStored", b"", b"\x00" * 3, b"\x01" * 32,
    [], {}, [None], {"type": None}, [[1, 2]],
)  # fmt: skip
# Headers that claim 2^32-1 items (array32, map32, bin32, str32) or 65,535 (array16, map16).
CLAIMS: Final = (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                 b"\xdb\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff")  # fmt: skip
# One level of nesting each: [x], {"k": x}, [nil, x], {"type": x}.
_OPENERS: Final = (b"\x91", b"\x81\xa1k", b"\x92\xc0", b"\x81\xa4type")
BAD_SEQ_LENGTHS: Final = (0, 1, 4, 7, 9, 16)


class Kind(enum.StrEnum):
    """What a mutant is; the value is the label a campaign counts by."""

    VALID = "valid"  # a seed payload as it is (in sequence)
    BYTE_FLIP = "byte_flip"  # 1-8 bits of the payload flipped
    TRUNCATE = "truncate"  # the payload cut short
    SPLICE = "splice"  # bytes inserted, deleted or a range duplicated
    RANDOM_BYTES = "random_bytes"  # a payload of random bytes (some behind a batch's header)
    DEEP_EXTRA_KEYS = "deep_extra_keys"  # 1,000-5,000 levels inside a BlockStored's extra_keys
    DEEP_UNKNOWN_KEY = "deep_unknown_key"  # the same under an unknown key / trailing field
    DEEP_FIELD = "deep_field"  # the same in another known field (tokens, hashes, events, ...)
    HUGE_INT = "huge_int"  # an int replaced by 2^64-1, 2^63, 2^32, ...
    NEGATIVE_INT = "negative_int"  # an int replaced by a negative one
    FLOAT_INT = "float_int"  # an int replaced by a float (4.0, nan, inf, ...)
    WRONG_TYPE = "wrong_type"  # any value replaced by one of another type
    OVERSIZED_ARRAY = "oversized_array"  # thousands of blocks or events, or a header's claim
    FRAME_COUNT = "frame_count"  # 1, 2, 4 or 5 frames instead of 3
    BAD_SEQ = "bad_seq"  # a seq frame that is not 8 bytes
    SEQ_JUMP = "seq_jump"  # a valid payload whose seq jumps forward or back


DEFAULT_WEIGHTS: Final[Mapping[Kind, float]] = {
    Kind.VALID: 4,
    Kind.BYTE_FLIP: 8,
    Kind.TRUNCATE: 6,
    Kind.SPLICE: 5,
    Kind.RANDOM_BYTES: 4,
    Kind.DEEP_EXTRA_KEYS: 5,
    Kind.DEEP_UNKNOWN_KEY: 5,
    Kind.DEEP_FIELD: 4,
    Kind.HUGE_INT: 6,
    Kind.NEGATIVE_INT: 4,
    Kind.FLOAT_INT: 4,
    Kind.WRONG_TYPE: 8,
    Kind.OVERSIZED_ARRAY: 1,
    Kind.FRAME_COUNT: 3,
    Kind.BAD_SEQ: 3,
    Kind.SEQ_JUMP: 2,
}


@dataclass(frozen=True, slots=True)
class Mutant:
    """One hostile live message. ``seq`` is the value its seq frame carries, None when it has
    no readable one; ``number`` counts the mutants of this ``Mutator`` from 0."""

    number: int
    kind: Kind
    frames: list[bytes]
    seq: int | None


@dataclass(frozen=True, slots=True)
class _Seed:
    payload: bytes
    value: object  # the payload decoded generically (lists, dicts, ints, bytes, ...)
    ints: tuple[Path, ...]  # every int (not bool) in the events
    nodes: tuple[Path, ...]  # every value in the batch, the root excluded
    stored: tuple[Path, ...]  # every BlockStored event (array or map)


_ENCODER: Final = msgspec.msgpack.Encoder()


def deep(rng: random.Random, depth: int) -> msgspec.Raw:
    """``depth`` levels of msgpack arrays and maps (a repeated pattern of them) around a nil."""
    openers = [rng.choice(_OPENERS) for _ in range(rng.randint(1, 3))]
    return msgspec.Raw(b"".join(openers) * -(-depth // len(openers)) + b"\xc0")


def replaced(value: object, path: Path, new: object) -> object:
    """``value`` with the node at ``path`` replaced; only the containers on the path are copied."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, list) and isinstance(head, int):
        return [*value[:head], replaced(value[head], rest, new), *value[head + 1 :]]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    raise ValueError(f"no node at {path!r}")


def node(value: object, path: Path) -> object:
    """The node at ``path`` in ``value``."""
    for step in path:
        if isinstance(value, list) and isinstance(step, int):
            value = value[step]
            continue
        if not isinstance(value, dict):
            raise ValueError(f"no node at {path!r}")
        value = value[step]
    return value


def _walk(value: object, path: Path) -> Iterator[tuple[Path, object]]:
    yield path, value
    if isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, (*path, key))


def _is_stored(event: object) -> bool:
    if isinstance(event, dict):
        return event.get("type") == "BlockStored"
    return isinstance(event, list) and bool(event) and event[0] == "BlockStored"


def _seed(payload: bytes) -> _Seed:
    try:
        value = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"a seed payload is not msgpack: {exc}") from exc
    nodes = tuple(p for p, _ in _walk(value, ()) if p)
    ints = tuple(
        p
        for p in nodes
        if p[0] == 1 and isinstance(v := node(value, p), int) and not isinstance(v, bool)
    )
    events = value[1] if isinstance(value, list) and len(value) > 1 else []
    stored = tuple(
        (1, i) for i, e in enumerate(events if isinstance(events, list) else ()) if _is_stored(e)
    )
    return _Seed(payload, value, ints, nodes, stored)


class Mutator:
    """An endless, seeded stream of hostile live messages (and replay answers) from seeds."""

    def __init__(
        self,
        seeds: Sequence[Sequence[bytes]],
        *,
        seed: int = 0,
        weights: Mapping[Kind, float] | None = None,
        topic: bytes | None = None,
        depth: tuple[int, int] = DEPTH_RANGE,
        max_oversized: int = 2_000,
    ) -> None:
        """``seeds``: live messages (the payload is their last frame); ``topic`` defaults to the
        first seed's; ``max_oversized``: most blocks or events of a real oversized array."""
        if not seeds:
            raise ValueError("no seed messages")
        self._seeds = [_seed(bytes(frames[-1])) for frames in seeds]
        self.topic = bytes(seeds[0][0]) if topic is None and len(seeds[0]) == 3 else topic or b""
        self._rng = random.Random(seed)  # noqa: S311  # reproducible test input, not secrets
        chosen = dict(weights if weights is not None else DEFAULT_WEIGHTS)
        self._kinds = [k for k, w in chosen.items() if w > 0]
        self._weights = [chosen[k] for k in self._kinds]
        self._depth = depth
        self._max_oversized = max_oversized
        self.next_seq = 0  # what the next in-sequence live message carries
        self._count = 0
        self._big_cache: dict[int, tuple[int, msgspec.Raw, msgspec.Raw]] = {}
        self._payload_mutations: dict[Kind, Callable[[_Seed], bytes]] = {
            Kind.VALID: lambda s: s.payload,
            Kind.BYTE_FLIP: self._byte_flip,
            Kind.TRUNCATE: self._truncate,
            Kind.SPLICE: self._splice,
            Kind.RANDOM_BYTES: self._random_bytes,
            Kind.DEEP_EXTRA_KEYS: self._deep_extra_keys,
            Kind.DEEP_UNKNOWN_KEY: self._deep_unknown_key,
            Kind.DEEP_FIELD: self._deep_field,
            Kind.HUGE_INT: lambda s: self._swap_int(s, HUGE_INTS),
            Kind.NEGATIVE_INT: lambda s: self._swap_int(s, NEGATIVE_INTS),
            Kind.FLOAT_INT: lambda s: self._swap_int(s, FLOATS),
            Kind.WRONG_TYPE: self._wrong_type,
            Kind.OVERSIZED_ARRAY: self._oversized,
        }

    # --- live messages ---------------------------------------------------------------------

    def live(self) -> Mutant:
        """The next hostile live message."""
        rng = self._rng
        kind = rng.choices(self._kinds, self._weights)[0]
        number, self._count = self._count, self._count + 1
        seed = rng.choice(self._seeds)
        if kind is Kind.FRAME_COUNT:
            return Mutant(number, kind, self._frame_count(seed.payload), None)
        if kind is Kind.BAD_SEQ:
            seq_frame = rng.randbytes(rng.choice(BAD_SEQ_LENGTHS))
            return Mutant(number, kind, [self.topic, seq_frame, seed.payload], None)
        if kind is Kind.SEQ_JUMP:
            self._jump()
            payload = seed.payload
        else:
            payload = self._payload_mutations[kind](seed)
        seq = self._take_seq()
        return Mutant(number, kind, [self.topic, wire.encode_seq(seq), payload], seq)

    def valid(self, payload: bytes) -> list[bytes]:
        """``payload`` as the next in-sequence live message (to interleave good batches)."""
        return [self.topic, wire.encode_seq(self._take_seq()), payload]

    def restart(self) -> None:
        """Seqs start again from 0, as after an engine restart."""
        self.next_seq = 0

    def _take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq = (seq + 1) % SEQ_SPACE
        return seq

    def _jump(self) -> None:
        rng, seq = self._rng, self.next_seq
        choice = rng.randrange(5)
        if choice == 0:  # a small gap (a replay can fill it)
            seq += rng.randint(1, 5)
        elif choice == 1:  # a long gap
            seq += rng.randint(100, 100_000)
        elif choice == 2:  # back: a restarted engine (or a replayed seq sent live)
            seq = rng.randrange(seq + 1)
        elif choice == 3:  # the end-of-replay value, live
            seq = SEQ_SPACE - 1
        else:  # anywhere
            seq = rng.randrange(SEQ_SPACE)
        self.next_seq = seq % SEQ_SPACE

    def _frame_count(self, payload: bytes) -> list[bytes]:
        seq = wire.encode_seq(self.next_seq)  # not consumed: no seq can be read from these
        return self._rng.choice(
            (
                [payload],
                [self.topic],
                [self.topic, payload],
                [seq, payload],
                [self.topic, seq, payload, payload],
                [self.topic, self.topic, seq, payload],  # the replay layout of vLLM >= 0.26
                [b"", seq, payload, b"", b""],
            )
        )

    # --- replay answers --------------------------------------------------------------------

    def replay_answer(self, start: int, *, topic_frame: bool) -> list[list[bytes]]:
        """A hostile answer to a replay request from ``start`` (the DEALER's view; a ROUTER
        prepends the identity): a few batches, mostly in order from ``start`` and as hostile as
        live ones, then usually the end marker; sometimes a hole, a broken marker or none."""
        rng = self._rng
        seq = start if rng.random() < 0.8 else start + rng.randint(1, 10)  # else a hole
        messages = []
        for _ in range(rng.randint(0, 4)):
            kind = rng.choices(self._kinds, self._weights)[0]
            seed = rng.choice(self._seeds)
            mutate = self._payload_mutations.get(kind)
            payload = seed.payload if mutate is None else mutate(seed)
            head = [b"", self.topic] if topic_frame else [b""]
            message = [*head, wire.encode_seq(seq % SEQ_SPACE), payload]
            if rng.random() < 0.05:
                message = rng.choice((message[1:], [*message, b""], [b"x", *message[1:]]))
            messages.append(message)
            seq += 1 if rng.random() < 0.9 else rng.randint(2, 4)
        end = [b"", b"", wire.END_SEQ, b""] if topic_frame else [b"", wire.END_SEQ, b""]
        ending = rng.random()
        if ending < 0.85:
            messages.append(end)
        elif ending < 0.92:
            messages.append([*end[:-1], b"\x90"])  # the end seq with a payload
        # else: no end marker; the replay's deadline ends it
        return messages

    # --- payload mutations -----------------------------------------------------------------

    def _byte_flip(self, seed: _Seed) -> bytes:
        rng, data = self._rng, bytearray(seed.payload)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)

    def _truncate(self, seed: _Seed) -> bytes:
        return seed.payload[: self._rng.randrange(len(seed.payload))]

    def _splice(self, seed: _Seed) -> bytes:
        rng, data = self._rng, seed.payload
        at = rng.randrange(len(data) + 1)
        choice = rng.randrange(3)
        if choice == 0:
            return data[:at] + rng.randbytes(rng.randint(1, 16)) + data[at:]
        if choice == 1:
            return data[:at] + data[at + rng.randint(1, 16) :]
        end = min(len(data), at + rng.randint(1, 64))
        return data[:end] + data[at:end] * rng.randint(1, 8) + data[end:]

    def _random_bytes(self, seed: _Seed) -> bytes:
        rng = self._rng
        noise = rng.randbytes(rng.randint(0, 256))
        # Half behind a real batch header ([f64 ts, ... ): past the decoder's first checks.
        return seed.payload[: rng.choice((0, 10, 11))] + noise if rng.random() < 0.5 else noise

    def _encode(self, value: object) -> bytes:
        return _ENCODER.encode(value)

    def _deep(self) -> msgspec.Raw:
        return deep(self._rng, self._rng.randint(*self._depth))

    def _pick_stored(self, seed: _Seed) -> tuple[Path, object] | None:
        if not seed.stored:
            return None
        path = self._rng.choice(seed.stored)
        return path, node(seed.value, path)

    def _deep_extra_keys(self, seed: _Seed) -> bytes:
        picked = self._pick_stored(seed)
        if picked is None:
            return self._deep_unknown_key(seed)
        path, event = picked
        rng = self._rng
        if isinstance(event, dict):
            blocks = event.get("block_hashes")
            n = len(blocks) if isinstance(blocks, list) else 1
            extra: list[object] = [None] * max(n, 1)
            extra[rng.randrange(len(extra))] = (
                [self._deep()] if rng.random() < 0.5 else self._deep()
            )
            return self._encode(replaced(seed.value, (*path, "extra_keys"), extra))
        assert isinstance(event, list)  # noqa: S101  # _is_stored: a list or a dict
        blocks = event[1] if len(event) > 1 else None
        n = len(blocks) if isinstance(blocks, list) else 1
        extra = [None] * max(n, 1)
        extra[rng.randrange(len(extra))] = [self._deep()]
        # extra_keys is the 8th field (index 8, the tag first) from vLLM 0.17; pad older layouts.
        padded = [*event, *([None] * max(0, 9 - len(event)))]
        padded[8] = extra
        return self._encode(replaced(seed.value, path, padded))

    def _deep_unknown_key(self, seed: _Seed) -> bytes:
        rng, value = self._rng, seed.value
        events = node(value, (1,)) if isinstance(value, list) and len(value) > 1 else None
        if isinstance(events, list) and events and rng.random() < 0.8:
            i = rng.randrange(len(events))
            event = events[i]
            if isinstance(event, dict):
                key = rng.choice(("session_id_v2", "x", "lookahead", "\u00e9"))
                return self._encode(replaced(value, (1, i), {**event, key: self._deep()}))
            if isinstance(event, list):  # a trailing field a newer release appended
                return self._encode(replaced(value, (1, i), [*event, self._deep()]))
        if isinstance(value, list):  # a 4th element of the batch envelope
            return self._encode([*value, self._deep()])
        return self._encode([value, self._deep()])

    def _deep_field(self, seed: _Seed) -> bytes:
        rng, value = self._rng, seed.value
        picked = self._pick_stored(seed)
        if picked is not None and rng.random() < 0.7:
            path, event = picked
            if isinstance(event, dict):
                key = rng.choice(("token_ids", "block_hashes", "parent_block_hash", "lora_name",
                                  "medium", "block_size", "type"))  # fmt: skip
                return self._encode(replaced(value, (*path, key), self._deep()))
            if isinstance(event, list) and len(event) > 1:
                at = rng.randrange(1, len(event))
                return self._encode(replaced(value, (*path, at), self._deep()))
        # the events list, an event, the timestamp or the rank
        target = rng.choice([p for p in seed.nodes if len(p) <= 2] or [(0,)])
        return self._encode(replaced(value, target, self._deep()))

    def _swap_int(self, seed: _Seed, choices: Sequence[object]) -> bytes:
        if not seed.ints:
            return self._wrong_type(seed)
        path = self._rng.choice(seed.ints)
        return self._encode(replaced(seed.value, path, self._rng.choice(choices)))

    def _wrong_type(self, seed: _Seed) -> bytes:
        rng = self._rng
        path = rng.choice(seed.nodes) if seed.nodes else ()
        current = node(seed.value, path)
        new = rng.choice([v for v in WRONG_VALUES if type(v) is not type(current)])
        return self._encode(replaced(seed.value, path, new))

    def _big(self) -> tuple[int, msgspec.Raw, msgspec.Raw]:
        """A chain of thousands of blocks (4 tokens each): hashes and tokens, encoded once per
        size and reused (building them is most of the cost of an oversized mutant)."""
        rng = self._rng
        blocks = rng.randint(1_000, self._max_oversized)
        bucket = blocks // 500  # a few dozen distinct sizes, cached
        cached = self._big_cache.get(bucket)
        if cached is None:
            blocks = max(1, bucket * 500)
            hashes = msgspec.Raw(self._encode([rng.getrandbits(64) for _ in range(blocks)]))
            tokens = msgspec.Raw(self._encode([rng.randrange(50_000) for _ in range(blocks * 4)]))
            cached = self._big_cache[bucket] = (blocks, hashes, tokens)
        return cached

    def _oversized(self, seed: _Seed) -> bytes:
        rng, value = self._rng, seed.value
        choice = rng.randrange(4)
        picked = self._pick_stored(seed)
        if choice == 0 and picked is not None:
            # A real BlockStored of thousands of blocks, tokens to match: valid, only large.
            path, event = picked
            _, hashes, tokens = self._big()
            if isinstance(event, dict):
                grown: object = {
                    **event,
                    "block_hashes": hashes,
                    "parent_block_hash": None,
                    "token_ids": tokens,
                    "block_size": 4,
                    "extra_keys": None,
                }
            else:
                assert isinstance(event, list)  # noqa: S101  # _is_stored: a list or a dict
                row = ["BlockStored", hashes, None, tokens, 4, *event[5:]]
                if len(row) > 8:
                    row[8] = None  # extra_keys, one per block, would not match
                grown = row
            return self._encode(replaced(value, path, grown))
        if choice == 1 and isinstance(value, list) and len(value) > 1:
            # Thousands of events in one batch: one event's bytes repeated behind an array32.
            events = value[1] if isinstance(value[1], list) and value[1] else [["AllBlocksCleared"]]
            one = min((self._encode(e) for e in events), key=len)  # the smallest: count matters
            count = rng.randint(1_000, self._max_oversized)
            many = msgspec.Raw(b"\xdd" + count.to_bytes(4, "big") + one * count)
            return self._encode(replaced(value, (1,), many))
        if choice == 2 and seed.nodes:
            # A header claiming billions of items, with almost nothing after it.
            path = rng.choice(seed.nodes)
            claim = msgspec.Raw(rng.choice(CLAIMS) + rng.randbytes(rng.randint(0, 8)))
            return self._encode(replaced(value, path, claim))
        # A list of the wrong length where one entry per block is expected, or a long string.
        if picked is not None and isinstance(picked[1], dict):
            path = picked[0]
            key = rng.choice(("extra_keys", "lora_name", "medium"))
            size = rng.randint(1_000, self._max_oversized)
            long: object = [None] * size if key == "extra_keys" else "m" * size
            return self._encode(replaced(value, (*path, key), long))
        padding = msgspec.Raw(
            b"\xdd" + self._max_oversized.to_bytes(4, "big") + b"\x00" * self._max_oversized
        )
        return self._encode([*value, padding] if isinstance(value, list) else [value, padding])


def era_seeds(
    *, seed: int = 0, batches: int = 6, block_size: int = 4, topic: bytes = b"kv@fuzz@model"
) -> list[list[bytes]]:
    """Live messages of simulated traffic in every layout ``kvsync.sim.eras`` reproduces (each
    era, each of its hash formats): LoRA and salted requests (extra keys), removals, a clear."""
    messages: list[list[bytes]] = []
    for era in eras.Era:
        formats = [eras.HashFormat.INT64] if era is eras.Era.V0_10_1 else list(eras.HashFormat)
        for hashes in formats:
            engine = Engine(num_blocks=64, block_size=block_size, seed=seed, max_running=2)
            mix = Mix(
                system_prompt_tokens=(8, 24),
                user_tokens=(4, 16),
                output_tokens=(4, 16),
                max_tokens=160,  # 40 blocks: every request fits the 64-block pool
                lora_share=0.3,
                salt_share=0.3,
            )
            workload = Workload(
                PromptLibrary(mix, seed),
                seed=seed,
                adapter=Adapter(1, "sql-adapter"),
                salts=era is not eras.Era.V0_10_1,
            )
            steps = [engine.run(workload.next_request()) for _ in range(batches)]
            for events in [*steps, engine.clear()]:
                if events:
                    payload = eras.encode_batch(era, events, ts=1.0e9, dp_rank=0, hashes=hashes)
                    seq = wire.encode_seq(len(messages))
                    messages.append([topic, seq, payload])
    return messages


@dataclass(frozen=True, slots=True)
class Probe:
    """A well-formed two-batch stream for after a storm: ``payloads[0]`` stores a root chain,
    ``payloads[1]`` a block chained to its last one; ``token_ids`` is what a query asks for."""

    payloads: tuple[bytes, bytes]
    token_ids: tuple[int, ...]
    blocks: int


def probe(
    *, era: eras.Era = eras.Era.V0_33, blocks: int = 3, block_size: int = 4, first: int = 7_000
) -> Probe:
    """A ``Probe`` whose tokens (``first`` onwards) no seed uses, so a match proves it landed."""
    tokens = tuple(range(first, first + (blocks + 1) * block_size))
    hashes: list[model.EngineHash] = [(first << 8) + i for i in range(blocks + 1)]
    root = model.BlockStored(
        block_hashes=hashes[:blocks],
        parent_block_hash=None,
        token_ids=model.encode_tokens(tokens[: blocks * block_size]),
        block_size=block_size,
        medium=model.GPU,
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    child = model.BlockStored(
        block_hashes=hashes[blocks:],
        parent_block_hash=hashes[blocks - 1],
        token_ids=model.encode_tokens(tokens[blocks * block_size :]),
        block_size=block_size,
        medium=model.GPU,
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    )
    fmt = era.default_hashes
    payloads = (
        eras.encode_batch(era, [root], ts=1.0e9, dp_rank=0, hashes=fmt),
        eras.encode_batch(era, [child], ts=1.0e9, dp_rank=0, hashes=fmt),
    )
    return Probe(payloads, tokens, blocks + 1)
