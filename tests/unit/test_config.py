"""config.load: flag > KVSYNC_ env > AIBrix env > default; every invalid value is one clear line."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvsync.daemon import cli, config
from kvsync.errors import ConfigError
from kvsync.index import values
from kvsync.model import EndpointId

SPEC_A = "name=pod-a,model=demo,pub=tcp://127.0.0.1:5557"
SPEC_B = "name=pod-b,model=demo,pub=tcp://127.0.0.1:6557,replay=tcp://127.0.0.1:6558,dp_size=2"


def test_defaults_match_the_contract() -> None:
    settings = config.load([], {})
    assert settings.discovery == "static"
    assert settings.namespace == ()
    assert settings.selector == "model.aibrix.ai/kv-events-enabled=true"
    assert settings.endpoint == ()
    assert (settings.pub_port, settings.replay_port, settings.dp_size) == (5557, None, 1)
    assert settings.topic == ""
    assert (settings.model_label, settings.lora_label) == (
        "model.aibrix.ai/name",
        "model.aibrix.ai/lora-id",
    )
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)
    assert settings.api_token is None
    assert settings.max_body_bytes == 16 * 1024 * 1024
    assert settings.max_query_tokens == 1_000_000
    assert settings.default_block_size == 16
    assert dict(settings.medium_weights) == {"GPU": 1.0, "CPU": 0.8, "*": 0.5}
    limits = values.Limits()  # the index owns its defaults
    assert settings.max_contexts == limits.max_contexts
    assert settings.max_prefixes_per_context == limits.max_keys_per_context
    assert settings.idle_ttl_seconds == limits.idle_ttl_seconds
    assert settings.eviction_interval_seconds == 60.0
    assert (settings.replay_timeout_seconds, settings.replay_cooldown_seconds) == (5.0, 30.0)
    assert (settings.drain_seconds, settings.stop_timeout_seconds) == (5.0, 5.0)
    assert (settings.log_level, settings.log_format) == ("info", "json")
    assert (settings.shard_count, settings.shard_index) == (1, 0)


def test_shard_options_from_flags_and_env() -> None:
    settings = config.load(["--shard-index", "2"], {"KVSYNC_SHARD_COUNT": "3"})
    assert (settings.shard_count, settings.shard_index) == (3, 2)
    settings = config.load(["--shard-count", "4"], {"KVSYNC_SHARD_INDEX": "3"})
    assert (settings.shard_count, settings.shard_index) == (4, 3)


def test_discovery_defaults_to_kubernetes_in_a_cluster() -> None:
    assert config.load([], {}, in_cluster=True).discovery == "kubernetes"
    assert config.load(["--discovery", "static"], {}, in_cluster=True).discovery == "static"


@pytest.mark.parametrize(
    ("field", "flag_value", "env_value", "flag_result", "env_result"),
    [
        ("http_port", "9000", "9001", 9000, 9001),
        ("drain_seconds", "0", "2.5", 0.0, 2.5),
        ("log_level", "debug", "WARNING", "debug", "warning"),
        ("topic", "kv@", "other", "kv@", "other"),
        ("replay_port", "5558", "none", 5558, None),
        ("selector", "a=b", "c=d", "a=b", "c=d"),
    ],
)
def test_flag_beats_env_beats_default(
    field: str, flag_value: str, env_value: str, flag_result: object, env_result: object
) -> None:
    flag = "--" + field.replace("_", "-")
    env = {"KVSYNC_" + field.upper(): env_value}
    assert getattr(config.load([flag, flag_value], env), field) == flag_result
    assert getattr(config.load([], env), field) == env_result
    assert getattr(config.load([flag, flag_value], {}), field) == flag_result


def test_repeatable_flags_and_their_env_lists() -> None:
    by_flag = config.load(["--namespace", "a", "--namespace", "b"], {"KVSYNC_NAMESPACE": "x"})
    assert by_flag.namespace == ("a", "b")
    assert config.load([], {"KVSYNC_NAMESPACE": "x, y,"}).namespace == ("x", "y")

    by_env = config.load([], {"KVSYNC_ENDPOINT": f"{SPEC_A};\n{SPEC_B}"})
    assert [e.id for e in by_env.endpoint] == [
        EndpointId("pod-a", 0),
        EndpointId("pod-b", 0),
        EndpointId("pod-b", 1),
    ]
    assert by_env.endpoint[2].pub == "tcp://127.0.0.1:6558"
    assert by_env.endpoint[2].replay == "tcp://127.0.0.1:6559"
    by_flags = config.load(["--endpoint", SPEC_B], {"KVSYNC_ENDPOINT": SPEC_A})
    assert {e.id.pod for e in by_flags.endpoint} == {"pod-b"}


def test_engine_port_is_the_default_of_static_specs_that_do_not_name_one() -> None:
    given = f"{SPEC_A},engine_port=7000"
    by_flag = config.load(["--engine-port", "9000", "--endpoint", SPEC_A, "--endpoint", SPEC_B], {})
    assert by_flag.engine_port == 9000
    assert {e.engine for e in by_flag.endpoint} == {"http://127.0.0.1:9000"}
    by_env = config.load(["--endpoint", given], {"KVSYNC_ENGINE_PORT": "9100"})
    assert [e.engine for e in by_env.endpoint] == ["http://127.0.0.1:7000"]
    assert config.load(["--endpoint", SPEC_A], {}).endpoint[0].engine == "http://127.0.0.1:8000"


def test_medium_weights_parse_into_a_mapping() -> None:
    settings = config.load(["--medium-weights", "GPU=1,STORAGE=0.25, * = 0"], {})
    assert dict(settings.medium_weights) == {"GPU": 1.0, "STORAGE": 0.25, "*": 0.0}


def test_aibrix_variables_apply_only_when_the_kvsync_name_is_unset() -> None:
    aibrix = {
        "AIBRIX_SYNC_MAX_CONTEXTS": "7",
        "AIBRIX_SYNC_MAX_PREFIXES_PER_CONTEXT": "1234",
        "AIBRIX_SYNC_EVICTION_INTERVAL_SECONDS": "15",
        "AIBRIX_SYNC_EVICTION_DURATION_MINUTES": "2",
    }
    settings = config.load([], aibrix)
    assert settings.max_contexts == 7
    assert settings.max_prefixes_per_context == 1234
    assert settings.eviction_interval_seconds == 15.0
    assert settings.idle_ttl_seconds == 120.0  # AIBrix states minutes

    both = config.load([], {**aibrix, "KVSYNC_MAX_CONTEXTS": "9", "KVSYNC_IDLE_TTL_SECONDS": "30"})
    assert (both.max_contexts, both.idle_ttl_seconds) == (9, 30.0)
    assert config.load(["--max-contexts", "11"], both_env := aibrix).max_contexts == 11
    assert both_env is aibrix


def test_help_names_every_env_var_and_aibrix_fallback() -> None:
    text = " ".join(config.parser().format_help().split())
    for option in config.OPTIONS:
        assert option.flag in text
        assert option.env in text
        if option.aibrix:
            assert option.aibrix in text


def test_redacted_hides_the_token_only() -> None:
    settings = config.load(["--api-token", "s3cret", "--endpoint", SPEC_A], {})
    shown = settings.redacted()
    assert "s3cret" not in repr(shown)
    assert shown["api_token"] == config.REDACTED
    assert shown["http_port"] == 8080
    assert shown["endpoint"] == ["pod-a#0 demo tcp://127.0.0.1:5557"]
    assert config.load([], {}).redacted()["api_token"] is None


INVALID = [
    (["--http-port", "http"], {}, "--http-port: expected an integer in [0, 65535]"),
    (["--http-port", "70000"], {}, "--http-port: expected an integer"),
    (["--http-port", "1.5"], {}, "--http-port: expected an integer"),
    ([], {"KVSYNC_HTTP_PORT": "-1"}, "KVSYNC_HTTP_PORT: expected an integer"),
    (["--pub-port", "0"], {}, "--pub-port: expected an integer in [1, 65535]"),
    (["--replay-port", "0"], {}, "--replay-port: expected an integer"),
    (["--dp-size", "0"], {}, "--dp-size: expected an integer"),
    (["--drain-seconds", "-1"], {}, "--drain-seconds: expected a number of seconds >= 0"),
    (["--drain-seconds", "nan"], {}, "--drain-seconds: expected a number of seconds"),
    (
        ["--stop-timeout-seconds", "0"],
        {},
        "--stop-timeout-seconds: expected a number of seconds > 0",
    ),
    ([], {"KVSYNC_REPLAY_TIMEOUT_SECONDS": "inf"}, "KVSYNC_REPLAY_TIMEOUT_SECONDS: expected"),
    (["--log-level", "verbose"], {}, "--log-level: expected one of debug, info, warning, error"),
    (["--log-format", "xml"], {}, "--log-format: expected one of json, console"),
    (["--discovery", "consul"], {}, "--discovery: expected one of kubernetes, static"),
    (["--medium-weights", "GPU"], {}, "--medium-weights: expected MEDIUM=WEIGHT"),
    (["--medium-weights", "GPU=-1"], {}, "--medium-weights: expected MEDIUM=WEIGHT"),
    (["--medium-weights", "=1"], {}, "--medium-weights: expected MEDIUM=WEIGHT"),
    (["--max-body-bytes", "0"], {}, "--max-body-bytes: expected an integer"),
    (["--max-query-tokens", "many"], {}, "--max-query-tokens: expected an integer"),
    (["--default-block-size", "0"], {}, "--default-block-size: expected an integer"),
    (["--namespace", " "], {}, "--namespace: expected a non-empty value"),
    (["--endpoint", "name=a"], {}, "--endpoint 'name=a': missing model="),
    ([], {"KVSYNC_ENDPOINT": "name=a,pub=x"}, "KVSYNC_ENDPOINT: --endpoint"),
    ([], {"AIBRIX_SYNC_MAX_CONTEXTS": "lots"}, "AIBRIX_SYNC_MAX_CONTEXTS: expected an integer"),
    (
        [],
        {"AIBRIX_SYNC_EVICTION_DURATION_MINUTES": "-3"},
        "AIBRIX_SYNC_EVICTION_DURATION_MINUTES: expected a number of seconds > 0",
    ),
    (["--nope"], {}, "unrecognized arguments: --nope"),
    (["--http-port"], {}, "argument --http-port: expected one argument"),
    (["--discovery", "kubernetes", "--endpoint", SPEC_A], {}, "need --discovery static"),
    (["--api-token", "a", "--api-token-file", "/t"], {}, "not both"),
    (["--endpoint", SPEC_A, "--endpoint", SPEC_A], {}, "duplicate endpoint pod-a#0"),
    (["--shard-count", "0"], {}, "--shard-count: expected an integer in [1, 1024]"),
    ([], {"KVSYNC_SHARD_COUNT": "two"}, "KVSYNC_SHARD_COUNT: expected an integer"),
    (["--shard-index", "-1"], {}, "--shard-index: expected an integer in [0, 1023]"),
    (
        ["--shard-count", "2", "--shard-index", "2"],
        {},
        "--shard-index (KVSYNC_SHARD_INDEX) 2 must be below --shard-count (KVSYNC_SHARD_COUNT) 2",
    ),
    ([], {"KVSYNC_SHARD_INDEX": "1"}, "--shard-index (KVSYNC_SHARD_INDEX) 1 must be below"),
]


@pytest.mark.parametrize(("argv", "env", "message"), INVALID)
def test_invalid_values_raise_one_clear_line(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(argv, env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("argv", "env", "message"), INVALID[::5])
def test_cli_exits_2_with_the_message_on_stderr(
    argv: list[str],
    env: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1
    assert err.startswith("kvsync: ")


@given(port=st.integers(0, 65535), other=st.integers(0, 65535))
def test_any_valid_port_round_trips_and_the_flag_wins(port: int, other: int) -> None:
    assert config.load([], {"KVSYNC_HTTP_PORT": f" {port} "}).http_port == port
    assert config.load(["--http-port", str(port)], {"KVSYNC_HTTP_PORT": str(other)}).http_port == (
        port
    )
