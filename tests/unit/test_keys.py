"""kvsync.index.keys: the chained block keys are what the architecture says, on both sides."""

from array import array
from typing import Annotated

import msgspec
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync import _native
from kvsync.index import keys

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
    return keys.query_keys(token_ids, block_size, salt)


@settings(max_examples=200, deadline=None)
@given(token_ids=tokens_strategy, block_size=st.integers(1, 17))
def test_query_keys_follow_the_formula(token_ids: list[int], block_size: int) -> None:
    assert all_query_keys(token_ids, block_size) == reference(token_ids, block_size, [])


@settings(max_examples=200, deadline=None)
@given(
    token_ids=tokens_strategy,
    block_size=st.integers(1, 17),
    extras=st.lists(st.none() | st.binary(max_size=3000), max_size=60),
)
def test_msgpack_ints_and_extras_give_the_formula(
    token_ids: list[int], block_size: int, extras: list[bytes | None]
) -> None:
    """The C chain from a msgpack array (an event's token ids) or from ints, with extra keys
    of any length (past the C scratch buffer too), is the documented formula."""
    n_blocks = len(token_ids) // block_size
    per_block = (extras + [None] * n_blocks)[:n_blocks]
    expected = reference(token_ids, block_size, per_block)
    raw = msgspec.Raw(msgspec.msgpack.encode(token_ids))
    assert keys.chain(keys.ROOT, raw, block_size, per_block) == expected
    assert keys.chain(keys.ROOT, token_ids, block_size, per_block) == expected


@settings(max_examples=100, deadline=None)
@given(token_ids=tokens_strategy, cut=st.integers(0, 50))
def test_chain_split_through_a_parent_equals_one_event(token_ids: list[int], cut: int) -> None:
    block_size = 4
    n = len(token_ids) // block_size
    cut = min(cut, n)
    whole = keys.chain(keys.ROOT, token_ids[: n * block_size], block_size)
    head = keys.chain(keys.ROOT, token_ids[: cut * block_size], block_size)
    tail_ids = token_ids[cut * block_size : n * block_size]
    tail = keys.chain(head[-1] if head else keys.ROOT, tail_ids, block_size)
    assert head + tail == whole


def test_every_token_and_the_whole_prefix_change_the_key() -> None:
    base = keys.chain(keys.ROOT, list(range(12)), 4)
    changed_first = keys.chain(keys.ROOT, [99, *range(1, 12)], 4)
    changed_last = keys.chain(keys.ROOT, [*range(11), 99], 4)
    assert all(a != b for a, b in zip(base, changed_first, strict=True))  # prefix carries on
    assert base[:2] == changed_last[:2]
    assert base[2] != changed_last[2]
    assert len(set(base)) == 3


def test_array_input_gives_the_same_keys_as_a_list() -> None:
    ids = list(range(1000, 1064))
    assert all_query_keys(ids, 16) == keys.query_keys(array("I", ids), 16)


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
    salted = keys.chain(keys.ROOT, ids, 4, [keys.normalise_extras(["salt-42"], None)] + [None] * 9)
    assert all_query_keys(ids, 4, "salt-42") == salted
    assert all_query_keys(ids, 4) != salted
    assert all_query_keys(ids, 4, "salt-43")[0] != salted[0]
    assert salted == reference(ids, 4, [keys.salt_extra("salt-42")])


def test_extra_keys_are_kept_apart_from_tokens() -> None:
    ids = list(range(8))
    plain = keys.chain(keys.ROOT, ids, 4)
    mm = keys.chain(keys.ROOT, ids, 4, [keys.normalise_extras([["mm", 0]], None), None])
    assert plain[0] != mm[0]
    assert plain[1] != mm[1]


def test_a_query_shorter_than_a_block_has_no_keys() -> None:
    assert all_query_keys([1, 2, 3], 4) == []
    assert all_query_keys([], 4, "salt") == []


@settings(max_examples=200, deadline=None)
@given(
    token_ids=tokens_strategy,
    block_size=st.integers(1, 9),
    salt=st.none() | st.text(max_size=4),
    held=st.integers(0, 60),
)
def test_the_c_walk_finds_exactly_the_stored_prefix(
    token_ids: list[int], block_size: int, salt: str | None, held: int
) -> None:
    """What ``KeyTable.walk`` hashes as it goes equals the formula: an endpoint that stored the
    first ``held`` blocks of the (salted) query matches exactly those, across the walk's
    64-block conversion chunks."""
    query = keys.query_keys(token_ids, block_size, salt)
    assert query == reference(
        token_ids, block_size, [] if salt is None else [keys.salt_extra(salt)]
    )
    held = min(held, len(query))
    table = _native.KeyTable(block_size)
    if held:
        table.store_keys(5, keys.ROOT, list(range(held)), query[:held])
    salt_bytes = None if salt is None else keys.salt_extra(salt)
    runs, matched = table.walk(token_ids, salt_bytes, 1 << 5, True)
    assert runs == ({5: held} if held else {})
    assert matched == query[:held]


def test_out_of_range_token_ids_raise() -> None:
    for bad in ([-1], [2**32]):
        with pytest.raises(OverflowError):
            keys.chain(keys.ROOT, bad, 1)
        with pytest.raises(ValueError, match=r"^tokens: "):
            keys.chain(keys.ROOT, msgspec.Raw(msgspec.msgpack.encode(bad)), 1)
    with pytest.raises(ValueError, match=r"^tokens: "):
        keys.chain(keys.ROOT, msgspec.Raw(msgspec.msgpack.encode(["x"])), 1)


# -- token ids from JSON: the C parser agrees with msgspec's strict decode ----------------------

_STRICT: "msgspec.json.Decoder[list[int]]" = msgspec.json.Decoder(
    list[Annotated[int, msgspec.Meta(ge=0, lt=2**32)]]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(
    ids=st.lists(st.integers(0, 2**32 - 1), max_size=300),
    spaces=st.sampled_from(["", " ", "\n\t "]),
)
def test_json_token_ids_reads_every_array_of_token_ids(ids: list[int], spaces: str) -> None:
    text = ("[" + spaces + ("," + spaces).join(map(str, ids)) + spaces + "]").encode()
    assert list(keys.json_token_ids(text)) == ids
    assert list(keys.json_token_ids(msgspec.json.encode(ids))) == ids


@settings(max_examples=1000, deadline=None)
@given(value=json_values | st.lists(json_values, max_size=6))
def test_json_token_ids_accepts_exactly_what_the_strict_decode_accepts(value: object) -> None:
    text = msgspec.json.encode(value)
    try:
        strict: list[int] | None = _STRICT.decode(text)
    except msgspec.ValidationError:
        strict = None
    try:
        fast: list[int] | None = list(keys.json_token_ids(text))
    except ValueError:
        fast = None
    assert fast == strict


def test_the_walk_reads_uint32_ids_as_it_reads_a_list() -> None:
    table = _native.KeyTable(4)
    ids = list(range(40))
    table.store(0, keys.ROOT, list(range(1, 11)), ids, None)
    as_list = table.walk(ids, None, 1, True)
    as_uint32 = table.walk(keys.json_token_ids(msgspec.json.encode(ids)), None, 1, True)
    assert as_list == as_uint32 == ({0: 10}, as_list[1])
    with pytest.raises(TypeError, match="uint32"):
        table.walk(memoryview(bytes(16)).cast("H"), None, 1, False)
