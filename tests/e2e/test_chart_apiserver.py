"""The chart against a real kube-apiserver (1.20, scripts/kube-apiserver.sh): server dry runs,
then real installs whose RBAC the API server's own authorizer is asked about.

Uses the e2e tier's session apiserver (tests/e2e/conftest.py) and helm from scripts/tools.sh
(skips, saying why, when helm cannot be installed). Pods never run (no kubelet): what is checked
is that the API server accepts every object and grants exactly what the chart says.
"""

import subprocess
from dataclasses import dataclass

import pytest

from tests.chart.rendering import ALL_OPTIONS, CHART, REDIS, STATIC, install_tools
from tests.e2e.cluster import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RELEASE_NAMESPACE = "kvsync-system"
WATCHED = ("inference", "inference-canary")  # config.namespace in ci/all-options-values.yaml


@dataclass(frozen=True)
class Kube:
    """helm and kubectl pointed at the e2e API server."""

    env: dict[str, str]
    helm_bin: str

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env, timeout=120, check=False
        )

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.helm_bin, *args)

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args)

    def can_i(self, verb: str, resource: str, namespace: str, account: str) -> bool:
        """Asks the API server's authorizer, impersonating the release's ServiceAccount."""
        proc = self.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            "--namespace",
            namespace,
            f"--as=system:serviceaccount:{RELEASE_NAMESPACE}:{account}",
        )
        assert proc.stdout.strip() in {"yes", "no"}, proc.stdout + proc.stderr
        return proc.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def kube(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Kube:
    tools = install_tools(tmp_path_factory.mktemp("helm-home"))
    result = Kube(env=tools.env | {"KUBECONFIG": cluster.kubeconfig}, helm_bin=tools.helm)
    for namespace in (RELEASE_NAMESPACE, *WATCHED):
        created = result.kubectl("create", "namespace", namespace)
        assert created.returncode == 0, created.stderr
    return result


def install_args(release: str, *extra: str) -> list[str]:
    return ["install", release, str(CHART), "--namespace", RELEASE_NAMESPACE, *extra]


@pytest.mark.parametrize(
    "values",
    [
        [],
        # The API server has no ServiceMonitor CRD (that needs the Prometheus Operator).
        ["--values", str(ALL_OPTIONS), "--set", "serviceMonitor.enabled=false"],
        ["--values", str(STATIC)],
        # Sharded over Redis: the StatefulSet, its headless Service, the pod-index env reference.
        ["--values", str(REDIS)],
    ],
    ids=["default", "all-options", "static", "redis"],
)
def test_server_dry_run_accepts_every_object(kube: Kube, values: list[str]) -> None:
    proc = kube.helm(*install_args("dry", "--dry-run=server", *values))
    assert proc.returncode == 0, proc.stderr
    assert "STATUS: pending-install" in proc.stdout
    # NOTES.txt is rendered by install: it carries the exact vLLM flag.
    assert '"publisher":"zmq","endpoint":"tcp://*:5557"' in proc.stdout


def test_all_namespaces_install_grants_read_on_pods_and_nothing_else(kube: Kube) -> None:
    proc = kube.helm(*install_args("wide"))
    assert proc.returncode == 0, proc.stderr
    account = "wide-kvsync"
    for namespace in ("default", *WATCHED):
        for verb in ("get", "list", "watch"):
            assert kube.can_i(verb, "pods", namespace, account), (verb, namespace)
        for verb in ("create", "delete", "patch"):
            assert not kube.can_i(verb, "pods", namespace, account), (verb, namespace)
        assert not kube.can_i("get", "secrets", namespace, account)
        assert not kube.can_i("list", "nodes", namespace, account)
    assert kube.helm("uninstall", "wide", "--namespace", RELEASE_NAMESPACE).returncode == 0


def test_listed_namespaces_install_grants_read_on_pods_there_only(kube: Kube) -> None:
    proc = kube.helm(
        *install_args(
            "narrow", "--values", str(ALL_OPTIONS), "--set", "serviceMonitor.enabled=false"
        )
    )
    assert proc.returncode == 0, proc.stderr
    account = "kvsync-reader"  # serviceAccount.name in ci/all-options-values.yaml
    for namespace in WATCHED:
        assert kube.can_i("watch", "pods", namespace, account)
        assert not kube.can_i("update", "pods", namespace, account)
    assert not kube.can_i("list", "pods", "default", account)
    assert not kube.can_i("list", "pods", RELEASE_NAMESPACE, account)
    pdb = kube.kubectl("get", "pdb", "--namespace", RELEASE_NAMESPACE, "-o", "name")
    assert pdb.stdout.strip() == "poddisruptionbudget.policy/narrow-kvsync"
    assert kube.helm("uninstall", "narrow", "--namespace", RELEASE_NAMESPACE).returncode == 0
