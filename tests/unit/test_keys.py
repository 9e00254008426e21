"""kvsync.keys: the chained block keys are what the architecture says, on both sides."""

from array import array

import msgspec
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync import keys

tokens_strategy = st.lists(st.integers(0, 2**32 - 1), max_size=200)


def reference(token_ids: list[int], block_size: int, extras: list[bytes | None]) -> list[int]:
    """The documented formula, written out the slow way (per-block bytes, no views)."""
    out: list[int] = []
    parent = keys.ROOT
    for i in range(len(token_ids) // block_size):
        data = array("I", token_ids[i * block_size : (i + 1) * block_size]).tobytes()
        extra = extras[i] if i < len(extras) else None
        parent = xxhash.xxh3_64_intdigest(data + (extra or b""), parent)
        out.append(parent)
    return out


def all_query_keys(token_ids: list[int], block_size: int, salt: str | None = None) -> list[int]:
    return [k for chunk in keys.query_chunks(token_ids, block_size, salt, chunk=3) for k in chunk]


@settings(max_examples=200, deadline=None)
@given(token_ids=tokens_strategy, block_size=st.integers(1, 17))
def test_query_keys_follow_the_formula_across_chunk_boundaries(
    token_ids: list[int], block_size: int
) -> None:
    assert all_query_keys(token_ids, block_size) == reference(token_ids, block_size, [])


@settings(max_examples=100, deadline=None)
@given(token_ids=tokens_strategy, cut=st.integers(0, 50))
def test_chain_split_through_a_parent_equals_one_event(token_ids: list[int], cut: int) -> None:
    block_size = 4
    n = len(token_ids) // block_size
    cut = min(cut, n)
    view = keys.token_view(token_ids)
    whole = keys.chain(keys.ROOT, view, block_size, n)
    head = keys.chain(keys.ROOT, view, block_size, cut)
    tail_view = keys.token_view(token_ids[cut * block_size :])
    tail = keys.chain(head[-1] if head else keys.ROOT, tail_view, block_size, n - cut)
    assert head + tail == whole


def test_every_token_and_the_whole_prefix_change_the_key() -> None:
    base = keys.chain(keys.ROOT, keys.token_view(list(range(12))), 4, 3)
    changed_first = keys.chain(keys.ROOT, keys.token_view([99, *range(1, 12)]), 4, 3)
    changed_last = keys.chain(keys.ROOT, keys.token_view([*range(11), 99]), 4, 3)
    assert all(a != b for a, b in zip(base, changed_first, strict=True))  # prefix carries on
    assert base[:2] == changed_last[:2]
    assert base[2] != changed_last[2]
    assert len(set(base)) == 3


def test_array_input_gives_the_same_keys_as_a_list() -> None:
    ids = list(range(1000, 1064))
    assert all_query_keys(ids, 16) == [
        k for chunk in keys.query_chunks(array("I", ids), 16) for k in chunk
    ]


def test_lora_name_is_dropped_from_extra_keys() -> None:
    assert keys.normalise_extras(["sql-adapter"], "sql-adapter") is None
    assert keys.normalise_extras(None, "x") is None
    assert keys.normalise_extras([], None) is None
    salted = keys.normalise_extras(["sql-adapter", "salt-1"], "sql-adapter")
    assert salted == keys.salt_extra("salt-1") == msgspec.msgpack.encode(["salt-1"])
    # a multimodal entry is kept, whatever the adapter
    assert keys.normalise_extras([["mm-hash", 0]], "sql-adapter") is not None


def test_query_salt_equals_a_published_salted_first_block() -> None:
    ids = list(range(40))
    salted = keys.chain(
        keys.ROOT,
        keys.token_view(ids),
        4,
        10,
        [keys.normalise_extras(["salt-42"], None)] + [None] * 9,
    )
    assert all_query_keys(ids, 4, "salt-42") == salted
    assert all_query_keys(ids, 4) != salted
    assert all_query_keys(ids, 4, "salt-43")[0] != salted[0]
    assert salted == reference(ids, 4, [keys.salt_extra("salt-42")])


def test_extra_keys_are_kept_apart_from_tokens() -> None:
    ids = list(range(8))
    plain = keys.chain(keys.ROOT, keys.token_view(ids), 4, 2)
    mm = keys.chain(
        keys.ROOT, keys.token_view(ids), 4, 2, [keys.normalise_extras([["mm", 0]], None), None]
    )
    assert plain[0] != mm[0]
    assert plain[1] != mm[1]


def test_a_query_shorter_than_a_block_has_no_keys() -> None:
    assert all_query_keys([1, 2, 3], 4) == []
    assert all_query_keys([], 4, "salt") == []


@settings(max_examples=100, deadline=None)
@given(
    token_ids=tokens_strategy,
    block_size=st.integers(1, 9),
    convert=st.integers(1, 5),
    salt=st.none() | st.text(max_size=4),
)
def test_lazy_query_keys_follow_the_formula_across_conversion_chunks(
    token_ids: list[int], block_size: int, convert: int, salt: str | None
) -> None:
    extras: list[bytes | None] = [] if salt is None else [keys.salt_extra(salt)]
    lazy = list(keys.query_keys(token_ids, block_size, salt, convert=convert))
    assert lazy == reference(token_ids, block_size, extras)
