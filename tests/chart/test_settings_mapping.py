"""values.yaml ↔ kvsync settings: every `config` key is a setting the daemon reads, and back.

The chart turns `config.fooBar` into the env var KVSYNC_FOO_BAR. These tests hold it to
kvsync.daemon.config: one values key per ``Settings`` field, only env names that ``config.OPTIONS``
knows, and — the end-to-end check — the rendered env, fed to ``config.load`` as the container
would see it, yields exactly the values written in the values files. A few settings follow from
the chart's structure instead of `config` (``CHART_OWNED``): the index backend and its Redis
connection, and the shard of each pod.
"""

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kvsync.daemon import config
from kvsync.errors import ConfigError
from tests.chart.rendering import ALL_OPTIONS, CHART, REDIS, STATIC, Chart, Rendered, load_values

pytestmark = pytest.mark.timeout(300)  # the first test may install the tools (scripts/tools.sh)

SETTING_FIELDS = {f.name for f in dataclasses.fields(config.Settings)}
DAEMON_ENV = {option.env: option.field for option in config.OPTIONS}
# Settings set from the chart's structure, not from a `config` key: which values decide them.
CHART_OWNED = {
    "index_backend": "index.backend",
    "redis_url": "redis.url",
    "redis_password_file": "redis.existingSecret",
    "redis_tls_ca_file": "redis.caCert",
    "shard_count": "shards",
    "shard_index": "the StatefulSet's pod index",
}


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def kvsync_env(rendered: Rendered, pod_labels: dict[str, str] | None = None) -> dict[str, str]:
    env = rendered.env(pod_labels)
    return {k: v for k, v in env.items() if k.startswith(config.ENV_PREFIX)}


@pytest.fixture(scope="module")
def every_render(
    default_render: Rendered,
    all_options_render: Rendered,
    static_render: Rendered,
    redis_render: Rendered,
) -> dict[str, Rendered]:
    return {
        "default": default_render,
        "all-options": all_options_render,
        "static": static_render,
        "redis": redis_render,
    }


def test_values_config_has_exactly_one_key_per_setting() -> None:
    keys = load_values()["config"]
    assert CHART_OWNED.keys() <= SETTING_FIELDS
    assert {snake(k) for k in keys} == SETTING_FIELDS - CHART_OWNED.keys()
    assert set(DAEMON_ENV.values()) == SETTING_FIELDS  # every setting has its env var
    for key in keys:
        assert re.fullmatch(r"[a-z][a-zA-Z]*", key), f"{key}: camelCase keys only"


def test_rendered_env_names_are_the_ones_the_daemon_reads(
    every_render: dict[str, Rendered],
) -> None:
    for name, rendered in every_render.items():
        for var in kvsync_env(rendered):
            assert var in DAEMON_ENV, f"{name}: {var} is read by no setting"


def test_every_setting_reaches_the_container_from_some_values_file(
    every_render: dict[str, Rendered],
) -> None:
    seen = set().union(*(kvsync_env(r) for r in every_render.values()))
    assert seen == set(DAEMON_ENV)


def test_default_values_give_the_daemon_its_own_defaults(default_render: Rendered) -> None:
    settings = config.load([], kvsync_env(default_render))
    assert settings == config.Settings(discovery="kubernetes")
    # and the values file writes every default out, so users see them (null: "none")
    written = {snake(k): v for k, v in load_values()["config"].items()}
    values = load_values()
    written["index_backend"] = values["index"]["backend"]
    written["shard_count"] = values["shards"]
    for setting in dataclasses.fields(config.Settings):
        if setting.name == "discovery" or setting.name in CHART_OWNED.keys() - written.keys():
            continue
        assert comparable(written[setting.name]) == comparable(getattr(settings, setting.name)), (
            setting.name
        )


def comparable(value: Any) -> Any:
    """Values-file and Settings values in one shape: lists/tuples, mappings, ints vs floats."""
    if isinstance(value, Mapping):
        return {str(k): comparable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [comparable(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.mark.parametrize("values_file", [ALL_OPTIONS, STATIC], ids=["all-options", "static"])
def test_values_files_reach_the_daemon_as_written(chart: Chart, values_file: Path) -> None:
    rendered = chart.render(values=[values_file])
    settings = config.load([], kvsync_env(rendered))
    for key, value in load_values(values_file)["config"].items():
        field = snake(key)
        actual = getattr(settings, field)
        if field == "endpoint":
            names = {spec.split(",")[0].removeprefix("name=") for spec in value}
            assert {e.id.pod for e in actual} == names
            assert len(actual) == 3  # pod-a, and pod-b's two DP ranks
        elif field == "medium_weights":
            assert dict(actual) == value
        else:
            assert comparable(actual) == comparable(value), field


def test_numbers_are_written_as_the_daemon_parses_them(chart: Chart, tmp_path: Path) -> None:
    # Numbers from a values file reach templates as floats: 2147483648 must not become
    # "2.147483648e+09", which the daemon's integer settings refuse.
    values = tmp_path / "big.yaml"
    values.write_text(
        "config:\n  maxBodyBytes: 2147483648\n  maxPrefixesPerContext: 1099511627776\n"
    )
    rendered = chart.render(values=[values])
    env = kvsync_env(rendered)
    assert env["KVSYNC_MAX_BODY_BYTES"] == "2147483648"
    settings = config.load([], env)
    assert settings.max_prefixes_per_context == 1 << 40
    assert settings.max_body_bytes == 1 << 31


def test_chart_readme_documents_every_setting_with_its_env_var() -> None:
    readme = (CHART / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `")
        for line in readme.splitlines()
        if line.startswith("| `config.")
    }
    assert rows == {
        f"config.{key}": config.ENV_PREFIX + snake(key).upper() for key in load_values()["config"]
    }


def test_values_schema_types_exactly_the_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    config_schema = schema["properties"]["config"]
    assert config_schema["additionalProperties"] is False
    assert set(config_schema["properties"]) == set(load_values()["config"])


@pytest.mark.parametrize("ordinal", [0, 2])
def test_redis_example_reaches_each_shard_as_written(redis_render: Rendered, ordinal: int) -> None:
    # The StatefulSet controller labels pod N with apps.kubernetes.io/pod-index: N.
    env = kvsync_env(redis_render, {"apps.kubernetes.io/pod-index": str(ordinal)})
    settings = config.load([], env)
    values = load_values(REDIS)
    assert settings.index_backend == values["index"]["backend"] == "redis"
    assert settings.redis_url == values["redis"]["url"]
    assert settings.redis_password_file == "/etc/kvsync/redis/password"  # noqa: S105  # a path
    assert settings.redis_tls_ca_file == "/etc/kvsync/redis/ca.crt"
    assert (settings.shard_count, settings.shard_index) == (values["shards"], ordinal)
    for key, value in values["config"].items():
        assert comparable(getattr(settings, snake(key))) == comparable(value), key


def test_a_pod_without_the_pod_index_label_fails_to_start_with_a_clear_error(
    redis_render: Rendered,
) -> None:
    # Before Kubernetes 1.28 the StatefulSet controller sets no pod-index label: the env var is
    # empty and the daemon refuses to guess its shard.
    env = kvsync_env(redis_render)
    assert env["KVSYNC_SHARD_INDEX"] == ""
    with pytest.raises(ConfigError, match="KVSYNC_SHARD_INDEX"):
        config.load([], env)
