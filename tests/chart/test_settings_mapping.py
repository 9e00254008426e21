"""values.yaml ↔ kvsync settings: every `config` key is a setting the daemon reads, and back.

The chart turns `config.fooBar` into the env var KVSYNC_FOO_BAR. These tests hold it to
kvsync.daemon.config: one values key per ``Settings`` field, only env names that ``config.OPTIONS``
knows, and — the end-to-end check — the rendered env, fed to ``config.load`` as the container
would see it, yields exactly the values written in the values files.
"""

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from kvsync.daemon import config
from tests.chart.rendering import ALL_OPTIONS, CHART, STATIC, Chart, Rendered, load_values

pytestmark = pytest.mark.timeout(300)  # the first test may install the tools (scripts/tools.sh)

SETTING_FIELDS = {f.name for f in dataclasses.fields(config.Settings)}
DAEMON_ENV = {option.env: option.field for option in config.OPTIONS}


def snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


def kvsync_env(rendered: Rendered) -> dict[str, str]:
    return {k: v for k, v in rendered.env().items() if k.startswith(config.ENV_PREFIX)}


@pytest.fixture(scope="module")
def every_render(
    default_render: Rendered, all_options_render: Rendered, static_render: Rendered
) -> dict[str, Rendered]:
    return {"default": default_render, "all-options": all_options_render, "static": static_render}


def test_values_config_has_exactly_one_key_per_setting() -> None:
    keys = load_values()["config"]
    assert {snake(k) for k in keys} == SETTING_FIELDS
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
    for setting in dataclasses.fields(config.Settings):
        if setting.name == "discovery":
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
