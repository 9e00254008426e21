"""The README configuration table cannot drift from kvsync.daemon.config: flags, env vars,
defaults."""

import dataclasses
import re
from pathlib import Path

from kvsync.daemon import config

README = Path(__file__).parents[2] / "README.md"
SETTINGS = {f.name: f for f in dataclasses.fields(config.Settings)}


def _config_rows() -> dict[str, list[str]]:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        flag = re.fullmatch(r"`(--[a-z-]+)`", cells[0]) if len(cells) == 4 else None
        if flag:
            rows[flag.group(1)] = cells[1:]
    return rows


def _default(name: str) -> object:
    spec = SETTINGS[name]
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def test_every_option_has_one_row_and_every_row_is_an_option() -> None:
    assert set(_config_rows()) == {option.flag for option in config.OPTIONS}


def test_env_column_names_the_variables_the_daemon_reads() -> None:
    rows = _config_rows()
    for option in config.OPTIONS:
        env_cell = rows[option.flag][0]
        assert f"`{option.env}`" in env_cell, option.flag
        if option.aibrix:
            assert f"`{option.aibrix}`" in env_cell, option.flag


def test_default_column_is_the_settings_default() -> None:
    rows = _config_rows()
    for option in config.OPTIONS:
        cell = rows[option.flag][1].strip("`")
        default = _default(option.field)
        if default is dataclasses.MISSING:  # discovery: decided by where kvsync runs
            assert "kubernetes in a cluster" in cell
        elif default is None or default == ():
            assert cell in {"none", "all namespaces"}, option.flag
        elif default == "":
            assert cell == '""', option.flag
        else:
            parsed = option.parse(cell)
            assert parsed == default, f"{option.flag}: README says {cell!r}, default {default!r}"
