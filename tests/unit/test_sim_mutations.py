"""The fuzz campaign's mutation generator: deterministic by seed, and each kind is what it says."""

import itertools

import msgspec
import pytest

from kvsync.errors import DecodeError, Reason
from kvsync.events import wire
from kvsync.events.decode import decode_live, decode_payload
from kvsync.model import BlockStored, token_list
from kvsync.sim import mutations
from kvsync.sim.mutations import Kind, Mutator
from tests import golden


@pytest.fixture(scope="module")
def seeds() -> list[list[bytes]]:
    return [m for c in golden.all_captures() for m in c.live] + mutations.era_seeds(seed=3)


def _only(kind: Kind, seeds: list[list[bytes]], count: int = 300) -> list[mutations.Mutant]:
    mutator = Mutator(seeds, seed=11, weights={kind: 1})
    return [mutator.live() for _ in range(count)]


def test_the_same_seed_gives_the_same_stream_and_another_seed_another(
    seeds: list[list[bytes]],
) -> None:
    def stream(seed: int) -> list[list[bytes]]:
        mutator = Mutator(seeds, seed=seed)
        return [mutator.live().frames for _ in range(2_000)]

    assert stream(5) == stream(5)
    assert stream(5) != stream(6)


def test_every_era_seed_decodes_cleanly(seeds: list[list[bytes]]) -> None:
    for frames in mutations.era_seeds(seed=3):
        assert not decode_live(frames).rejected


def test_seqs_count_from_zero_unless_the_kind_is_a_jump(seeds: list[list[bytes]]) -> None:
    mutator = Mutator(seeds, seed=2, weights={Kind.VALID: 1, Kind.BYTE_FLIP: 1})
    assert [mutator.live().seq for _ in range(5)] == [0, 1, 2, 3, 4]
    jumps = _only(Kind.SEQ_JUMP, seeds)
    steps = {b.seq - a.seq for a, b in itertools.pairwise(jumps) if a.seq and b.seq}
    assert 1 not in steps  # every one of them left the sequence


def test_frame_and_seq_damage_is_rejected_for_what_it_is(seeds: list[list[bytes]]) -> None:
    for mutant in _only(Kind.FRAME_COUNT, seeds):
        assert len(mutant.frames) in (1, 2, 4, 5)
        with pytest.raises(DecodeError) as caught:
            decode_live(mutant.frames)
        assert caught.value.reason is Reason.FRAMES
    for mutant in _only(Kind.BAD_SEQ, seeds):
        assert len(mutant.frames[1]) != wire.SEQ_BYTES
        with pytest.raises(DecodeError) as caught:
            decode_live(mutant.frames)
        assert caught.value.reason is Reason.SEQ


@pytest.mark.parametrize("kind", [Kind.DEEP_EXTRA_KEYS, Kind.DEEP_UNKNOWN_KEY, Kind.DEEP_FIELD])
def test_deep_kinds_nest_a_thousand_levels_or_more(kind: Kind, seeds: list[list[bytes]]) -> None:
    reasons = set()
    for mutant in _only(kind, seeds, 100):
        payload = mutant.frames[2]
        assert len(payload) > 1_000  # at least one byte per level
        try:
            batch = decode_live(mutant.frames)
        except DecodeError as exc:
            reasons.add(exc.reason)
        else:
            reasons.update(r.reason for r in batch.rejected)
    assert Reason.NESTING in reasons


def test_int_kinds_swap_ints_only(seeds: list[list[bytes]]) -> None:
    for kind, allowed in ((Kind.HUGE_INT, mutations.HUGE_INTS),
                          (Kind.NEGATIVE_INT, mutations.NEGATIVE_INTS)):  # fmt: skip
        swapped = 0
        for mutant in _only(kind, seeds, 100):
            value = msgspec.msgpack.decode(mutant.frames[2])
            ints = {v for _, v in mutations._walk(value, ()) if isinstance(v, int)}
            swapped += bool(ints & set(allowed))
        # A seed with no int in its events (a lone AllBlocksCleared) gets a wrong type instead.
        assert swapped > 80, kind


def test_an_oversized_store_is_valid_and_large(seeds: list[list[bytes]]) -> None:
    largest = 0
    for mutant in _only(Kind.OVERSIZED_ARRAY, seeds, 60):
        try:
            batch = decode_live(mutant.frames)
        except DecodeError:
            continue
        for event in batch.events:
            if isinstance(event, BlockStored):
                blocks = len(event.block_hashes)
                largest = max(largest, blocks)
                if blocks >= 1_000:
                    assert len(token_list(event)) == 4 * blocks
    assert largest >= 1_000


def test_a_replay_answer_mostly_ends_with_the_marker_in_the_asked_layout(
    seeds: list[list[bytes]],
) -> None:
    mutator = Mutator(seeds, seed=4)
    answers = [mutator.replay_answer(7, topic_frame=True) for _ in range(300)]
    ended = [a for a in answers if a and a[-1] == [b"", b"", wire.END_SEQ, b""]]
    assert 0.7 < len(ended) / len(answers) < 0.95
    firsts = [a[0] for a in answers if len(a) > 1 and len(a[0]) == 4]
    assert any(m[2] == wire.encode_seq(7) for m in firsts)
    old = mutator.replay_answer(7, topic_frame=False)
    assert all(len(m) != 4 or m[0] == b"x" for m in old[:-1])


def test_the_probe_decodes_as_a_chain_of_its_blocks() -> None:
    stream = mutations.probe(blocks=3, block_size=4, first=100)
    root, child = (decode_payload(i, p) for i, p in enumerate(stream.payloads))
    (first,), (second,) = root.events, child.events
    assert isinstance(first, BlockStored)
    assert isinstance(second, BlockStored)
    assert (len(first.block_hashes), len(second.block_hashes)) == (3, 1)
    assert second.parent_block_hash == first.block_hashes[-1]
    assert stream.blocks == 4
    assert stream.token_ids == tuple(range(100, 116))


def test_no_seeds_is_an_error() -> None:
    with pytest.raises(ValueError, match="no seed"):
        Mutator([], seed=0)
