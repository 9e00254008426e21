"""vLLM /metrics text -> load figures, for each release's metric names, and bad bodies."""

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsync.errors import LoadError, LoadReason
from kvsync.load.names import SAMPLE_NAMES, Figure
from kvsync.load.parse import ABSENT_RECHECK, MetricsReader, parse_engine_loads
from kvsync.load.values import EngineLoad
from kvsync.sim.engine import Engine
from kvsync.sim.engine_metrics import EngineMetrics
from kvsync.sim.records import Request

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _busy_engines() -> dict[int, Engine]:
    engines = {0: Engine(num_blocks=64, block_size=16), 1: Engine(num_blocks=64, block_size=16)}
    prompt = tuple(range(100))
    engines[0].run(Request(prompt, (1, 2)))
    engines[0].run(Request(prompt, (3,)))  # 6 of its 6 reusable blocks hit: 96 tokens
    engines[1].run(Request(tuple(range(500, 540)), ()))
    return engines


@pytest.mark.parametrize("names", ["legacy", "both", "current"])
def test_every_release_naming_gives_the_engines_own_figures(names: str) -> None:
    engines = _busy_engines()
    body = EngineMetrics(model=MODEL, engines=engines, names=names).render()  # type: ignore[arg-type]
    loads = parse_engine_loads(body)
    assert set(loads) == {0, 1}
    for rank, engine in engines.items():
        assert loads[rank] == EngineLoad(
            running=engine.running_requests,
            waiting=0.0,
            kv_cache_usage=engine.kv_cache_usage,
            prefix_queries=engine.prefix_queries,
            prefix_hits=engine.prefix_hits,
        )
    assert (loads[0].prefix_queries, loads[0].prefix_hits) == (200, 96)


def test_the_preferred_name_wins_when_both_are_exposed() -> None:
    body = (
        b'vllm:num_requests_running{engine="0"} 1\n'
        b'vllm:num_requests_waiting{engine="0"} 2\n'
        b'vllm:gpu_cache_usage_perc{engine="0"} 0.9\n'
        b'vllm:kv_cache_usage_perc{engine="0"} 0.25\n'
    )
    assert parse_engine_loads(body)[0].kv_cache_usage == 0.25


def test_v0_hit_rate_gauge_and_a_pod_without_engine_label() -> None:
    body = (
        b"# HELP vllm:num_requests_running Number of requests currently running on GPU.\n"
        b"# TYPE vllm:num_requests_running gauge\n"
        b'vllm:num_requests_running{model_name="m"} 4.0\n'
        b'vllm:num_requests_waiting{model_name="m"} 0.0\n'
        b'vllm:num_requests_swapped{model_name="m"} 0.0\n'
        b'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n'
        b'vllm:gpu_prefix_cache_hit_rate{model_name="m"} 0.75'  # no final newline
    )
    assert parse_engine_loads(body) == {
        None: EngineLoad(running=4, waiting=0, kv_cache_usage=0.5, prefix_hit_rate=0.75)
    }


def test_lookalike_names_and_comments_are_not_read() -> None:
    body = (
        b"# vllm:num_requests_running 99\n"
        b"vllm:num_requests_running_total 98\n"
        b"vllm:num_requests_running 1\n"
        b"vllm:num_requests_waiting 0\n"
    )
    assert parse_engine_loads(body) == {None: EngineLoad(running=1, waiting=0)}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", LoadReason.NOT_VLLM),
        (b"<html>502 Bad Gateway</html>", LoadReason.NOT_VLLM),
        (b"process_cpu_seconds_total 12.5\n", LoadReason.NOT_VLLM),
        (b"vllm:num_requests_running 1\n", LoadReason.NOT_VLLM),  # no waiting
        (b"vllm:num_requests_running{engine=\"0\" 1\nvllm:num_requests_waiting 0\n",
         LoadReason.UNPARSABLE),
        (b"vllm:num_requests_running not-a-number\nvllm:num_requests_waiting 0\n",
         LoadReason.UNPARSABLE),
        (b"vllm:num_requests_running NaN\nvllm:num_requests_waiting 0\n", LoadReason.BAD_VALUE),
        (b"vllm:num_requests_running -1\nvllm:num_requests_waiting 0\n", LoadReason.BAD_VALUE),
        (b"vllm:num_requests_running +Inf\nvllm:num_requests_waiting 0\n", LoadReason.BAD_VALUE),
        (b'vllm:num_requests_running{engine="x"} 1\nvllm:num_requests_waiting 0\n',
         LoadReason.BAD_VALUE),
        (b"vllm:num_requests_running \xff\xfe\nvllm:num_requests_waiting 0\n",
         LoadReason.UNPARSABLE),
    ],
)  # fmt: skip
def test_bad_bodies_are_rejected_with_a_reason(body: bytes, reason: LoadReason) -> None:
    with pytest.raises(LoadError) as raised:
        parse_engine_loads(body)
    assert raised.value.reason == reason


_LINE_PARTS = st.sampled_from(
    [name.encode() for names in SAMPLE_NAMES.values() for name in names]
    + [b"{", b"}", b'engine="0"', b'engine="1"', b",", b" ", b"1", b"-2", b"NaN", b"\n", b'"',
       b"\\", b"#", b"=", b"0.5e3", b"\xff"]
)  # fmt: skip


_BODIES = st.lists(_LINE_PARTS, max_size=40).map(b"".join) | st.binary(max_size=200)


def _outcome(read: Callable[[bytes], object], body: bytes) -> object:
    try:
        return read(body)
    except LoadError as error:
        return error.reason


@given(_BODIES)
def test_any_body_gives_figures_or_a_load_error(body: bytes) -> None:
    loads = _outcome(parse_engine_loads, body)
    if isinstance(loads, LoadReason):
        return
    assert isinstance(loads, dict)
    for load in loads.values():
        for value in (load.running, load.waiting, load.kv_cache_usage):
            assert value is None or (math.isfinite(value) and value >= 0)


def _vllm_body(rng: random.Random) -> bytes:
    engines = {0: Engine(num_blocks=64), 1: Engine(num_blocks=64)}
    for _ in range(rng.randrange(4)):
        engines[rng.randrange(2)].run(Request(tuple(rng.randrange(99) for _ in range(40)), ()))
    names = rng.choice(["legacy", "both", "current"])
    return EngineMetrics(model=MODEL, engines=engines, names=names).render()  # type: ignore[arg-type]


@given(st.lists(_BODIES | st.randoms(use_true_random=False).map(_vllm_body), max_size=8))
def test_a_reader_kept_across_bodies_reads_each_as_a_fresh_one(bodies: list[bytes]) -> None:
    # What the reader remembers (where each family was, the series it parsed) never changes
    # what it reads: only how fast.
    kept = MetricsReader(absent_recheck=0)
    for body in bodies:
        assert _outcome(kept.read, body) == _outcome(parse_engine_loads, body)


def test_a_name_found_absent_is_looked_for_again_later() -> None:
    legacy = b"vllm:num_requests_running 1\nvllm:num_requests_waiting 0\n"
    reader = MetricsReader()
    old = legacy + b"vllm:gpu_cache_usage_perc 0.5\n"
    assert reader.read(old)[None].kv_cache_usage == 0.5
    new = legacy + b"vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.25\n"
    readings = [reader.read(new)[None].kv_cache_usage for _ in range(ABSENT_RECHECK + 1)]
    assert readings[0] == 0.5  # the preferred name was absent a moment ago
    assert readings[-1] == 0.25


def test_a_family_that_moved_far_is_still_found_whole() -> None:
    body = (
        b'vllm:num_requests_running{engine="0"} 1\nvllm:num_requests_running{engine="1"} 2\n'
        b'vllm:num_requests_waiting{engine="0"} 0\nvllm:num_requests_waiting{engine="1"} 3\n'
    )
    reader = MetricsReader()
    assert reader.read(body)[1].waiting == 3
    padding = b"".join(b"python_gc_objects_collected_total{generation=\"%d\"} 1\n" % i
                       for i in range(500))  # fmt: skip
    moved = padding + body.replace(b"} 2", b"} 7")
    assert {rank: load.running for rank, load in reader.read(moved).items()} == {0: 1, 1: 7}
    assert reader.read(body)[1].running == 2


def test_every_figure_has_a_name_per_release() -> None:
    assert set(SAMPLE_NAMES) == set(Figure)
