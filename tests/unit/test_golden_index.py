"""The golden captures of real vLLM publishers, decoded and applied in seq order, give the
matches their scenario implies (tests/data/vectors/README.md).

Expectations come from the scenario text: block size 4; A = 3 root blocks (101..112), B = 2
blocks after A, C = 2 LoRA blocks ("sql-adapter", lora_id 1), D = 2 blocks salted "salt-42" on
block 0, seq 4 removes B's last block, seq 5 adds E (1 block after A's second) and removes C's
last block, seq 6 clears, seq 7 stores F = A's first two blocks again.
"""

from typing import Any

import pytest

from kvsync.events.decode import decode_live
from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import EndpointContext, Query
from kvsync.model import BlockStored, EndpointId
from tests import golden

A = list(range(101, 113))
B = list(range(113, 121))
C = list(range(201, 209))
D = list(range(301, 309))
E = list(range(401, 405))

# After each seq: (query tokens, query options) -> blocks the pod matches.
BEFORE_CLEAR: list[tuple[list[int], dict[str, Any], list[int]]] = [
    # tokens, options, expected run after seq 0 .. 5
    (A, {}, [3, 3, 3, 3, 3, 3]),
    (A + B, {}, [3, 5, 5, 5, 4, 4]),
    (A[:8] + E, {}, [2, 2, 2, 2, 2, 3]),
    (C, {"lora": True}, [0, 0, 2, 2, 2, 1]),
    (C, {}, [0, 0, 0, 0, 0, 0]),  # LoRA blocks never match the base model
    (D, {"cache_salt": "salt-42", "salted": True}, [0, 0, 0, 2, 2, 2]),
    (D, {"salted": True}, [0, 0, 0, 0, 0, 0]),  # salted blocks never match an unsalted query
    (D, {"cache_salt": "salt-43"}, [0, 0, 0, 0, 0, 0]),
    # vLLM 0.10.1 has no extra_keys: there D was published as a plain chain
    (D, {"unsalted": True}, [0, 0, 0, 2, 2, 2]),
]
NO_EXTRA_KEYS = "vllm-0.10.1"


def query(capture: golden.Capture, tokens: list[int], options: dict[str, Any]) -> Query:
    lora: dict[str, Any] = {}
    if options.get("lora"):
        # vLLM 0.10.1 has no lora_name: there the adapter is its integer id
        era_has_names = capture.name != NO_EXTRA_KEYS
        lora = {"lora_name": "sql-adapter"} if era_has_names else {"lora_id": 1}
    return Query("demo", tokens, cache_salt=options.get("cache_salt"), **lora)


@pytest.mark.parametrize("capture", golden.all_captures(), ids=lambda c: c.name)
def test_scenario_matches_after_every_seq(capture: golden.Capture) -> None:
    index = PrefixIndex()
    endpoints = set()
    endpoint = EndpointId("default/pod-a")
    for seq, frames in enumerate(capture.live):
        batch = decode_live(frames)
        assert batch.seq == seq
        assert not batch.rejected
        endpoint = EndpointId("default/pod-a", batch.data_parallel_rank or 0)
        endpoints.add(endpoint)
        outcome = index.apply(endpoint, EndpointContext("demo"), batch.events, float(seq))
        assert not outcome.rejected
        assert outcome.unknown_removed == 0
        for tokens, options, expected in BEFORE_CLEAR if seq <= 5 else []:
            if options.get("salted" if capture.name == NO_EXTRA_KEYS else "unsalted"):
                continue
            result = index.match(query(capture, tokens, options), float(seq))
            got = {m.endpoint: m.matched_blocks for m in result.matches}
            assert got == ({endpoint: expected[seq]} if expected[seq] else {}), (seq, tokens)
            if expected[seq]:
                assert (result.block_size, result.query_blocks) == (4, len(tokens) // 4)
        if seq == 5:
            # A's 3 blocks, B's first, C's first, D's 2, E
            assert index.blocks_held(endpoint) == 3 + 1 + 1 + 2 + 1
        if seq == 6:
            assert outcome.cleared == 1
            assert index.blocks_held(endpoint) == 0
            assert index.stats().keys == 0
    # after F: only F's two blocks, under A's first two keys
    assert len(endpoints) == 1
    assert index.blocks_held(endpoint) == 2
    for tokens, expected_run in ((A, 2), (A[:8], 2), (A + B, 2), (A[:8] + E, 2)):
        result = index.match(Query("demo", tokens), 7.0)
        assert [(m.endpoint, m.matched_blocks) for m in result.matches] == [
            (endpoint, expected_run)
        ]
    assert index.match(Query("demo", D, cache_salt="salt-42"), 7.0).matches == []


def test_dp_rank_1_capture_is_its_own_endpoint() -> None:
    (capture,) = [c for c in golden.all_captures() if c.name.endswith("dp-rank-1")]
    index = PrefixIndex()
    batch = decode_live(capture.live[0])
    assert batch.data_parallel_rank == 1
    index.apply(EndpointId("default/pod-a", 1), EndpointContext("demo"), batch.events, 0.0)
    (match,) = index.match(Query("demo", A), 0.0).matches
    assert match.endpoint == EndpointId("default/pod-a", 1)
    assert index.blocks_held(EndpointId("default/pod-a", 0)) == 0


def test_lora_blocks_of_three_vllm_eras_share_keys() -> None:
    """0.17 (array era, adapter name also in extra_keys), 0.33 (map era) and a 0.14-style event
    (lora_name, no extra_keys: built from the 0.17 capture) all match {lora_name: X}."""
    captures = {c.name: c for c in golden.all_captures()}
    events = {}
    for name in ("vllm-0.17.0", "vllm-0.33.0"):
        (event,) = decode_live(captures[name].live[2]).events
        events[name] = event
    era14 = decode_live(captures["vllm-0.17.0"].live[2]).events[0]
    assert isinstance(era14, BlockStored)
    era14.extra_keys = None  # what a 0.14-0.16 publisher sends
    events["0.14-style"] = era14
    index = PrefixIndex()
    for n, (name, event) in enumerate(sorted(events.items())):
        assert getattr(event, "lora_name", None) == "sql-adapter", name
        index.apply(EndpointId(f"pod-{n}"), EndpointContext("demo"), [event], 0.0)
    result = index.match(Query("demo", C, lora_name="sql-adapter"), 0.0)
    assert {m.endpoint.pod: m.matched_blocks for m in result.matches} == {
        "pod-0": 2,
        "pod-1": 2,
        "pod-2": 2,
    }
    assert index.stats().keys == 2  # one set of keys for all three eras
