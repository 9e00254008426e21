"""The chart against a real kube-apiserver (1.20, scripts/kube-apiserver.sh): server dry runs,
then a real install whose RBAC the API server's own authorizer is asked about.

Needs the apiserver binary built once (``scripts/kube-apiserver.sh build``, several minutes) and
helm (scripts/tools.sh); skips, saying which, when either is missing. Pods never run (no kubelet):
what is checked is that the API server accepts every object and grants exactly what the chart
says.
"""

import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.chart.rendering import ALL_OPTIONS, CHART, REPO, STATIC, install_tools

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

APISERVER_SCRIPT = REPO / "scripts" / "kube-apiserver.sh"
APISERVER_BIN = Path(
    os.environ.get("KVSYNC_TEST_CACHE", Path.home() / ".cache" / "kvsync-test"),
    "bin",
    "kube-apiserver",
)
RELEASE_NAMESPACE = "kvsync-system"
WATCHED = ("inference", "inference-canary")  # config.namespace in ci/all-options-values.yaml


@dataclass(frozen=True)
class Cluster:
    """helm and kubectl pointed at the test API server."""

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not APISERVER_BIN.is_file():
        pytest.skip(f"no {APISERVER_BIN}: build it once with `scripts/kube-apiserver.sh build`")
    tools = install_tools(tmp_path_factory.mktemp("helm-home"))
    run_dir = tmp_path_factory.mktemp("apiserver")
    env = dict(tools.env)
    etcd_port = free_port()
    # etcd also takes etcd_port + 1 for peers; an apiserver port far from it avoids a clash.
    env |= {"KVSYNC_ETCD_PORT": str(etcd_port), "KVSYNC_APISERVER_PORT": str(free_port())}
    start = subprocess.run(
        ["bash", str(APISERVER_SCRIPT), "start", str(run_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    try:
        assert start.returncode == 0, start.stderr
        env["KUBECONFIG"] = str(run_dir / "kubeconfig")
        result = Cluster(env=env, helm_bin=tools.helm)
        for namespace in (RELEASE_NAMESPACE, *WATCHED):
            created = result.kubectl("create", "namespace", namespace)
            assert created.returncode == 0, created.stderr
        yield result
    finally:
        subprocess.run(
            ["bash", str(APISERVER_SCRIPT), "stop", str(run_dir)],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )


def install_args(release: str, *extra: str) -> list[str]:
    return ["install", release, str(CHART), "--namespace", RELEASE_NAMESPACE, *extra]


@pytest.mark.parametrize(
    "values",
    [
        [],
        # The API server has no ServiceMonitor CRD (that needs the Prometheus Operator).
        ["--values", str(ALL_OPTIONS), "--set", "serviceMonitor.enabled=false"],
        ["--values", str(STATIC)],
    ],
    ids=["default", "all-options", "static"],
)
def test_server_dry_run_accepts_every_object(cluster: Cluster, values: list[str]) -> None:
    proc = cluster.helm(*install_args("dry", "--dry-run=server", *values))
    assert proc.returncode == 0, proc.stderr
    assert "STATUS: pending-install" in proc.stdout
    # NOTES.txt is rendered by install: it carries the exact vLLM flag.
    assert '"publisher":"zmq","endpoint":"tcp://*:5557"' in proc.stdout


def test_all_namespaces_install_grants_read_on_pods_and_nothing_else(cluster: Cluster) -> None:
    proc = cluster.helm(*install_args("wide"))
    assert proc.returncode == 0, proc.stderr
    account = "wide-kvsync"
    for namespace in ("default", *WATCHED):
        for verb in ("get", "list", "watch"):
            assert cluster.can_i(verb, "pods", namespace, account), (verb, namespace)
        for verb in ("create", "delete", "patch"):
            assert not cluster.can_i(verb, "pods", namespace, account), (verb, namespace)
        assert not cluster.can_i("get", "secrets", namespace, account)
        assert not cluster.can_i("list", "nodes", namespace, account)
    assert cluster.helm("uninstall", "wide", "--namespace", RELEASE_NAMESPACE).returncode == 0


def test_listed_namespaces_install_grants_read_on_pods_there_only(cluster: Cluster) -> None:
    proc = cluster.helm(
        *install_args(
            "narrow", "--values", str(ALL_OPTIONS), "--set", "serviceMonitor.enabled=false"
        )
    )
    assert proc.returncode == 0, proc.stderr
    account = "kvsync-reader"  # serviceAccount.name in ci/all-options-values.yaml
    for namespace in WATCHED:
        assert cluster.can_i("watch", "pods", namespace, account)
        assert not cluster.can_i("update", "pods", namespace, account)
    assert not cluster.can_i("list", "pods", "default", account)
    assert not cluster.can_i("list", "pods", RELEASE_NAMESPACE, account)
    pdb = cluster.kubectl("get", "pdb", "--namespace", RELEASE_NAMESPACE, "-o", "name")
    assert pdb.stdout.strip() == "poddisruptionbudget.policy/narrow-kvsync"
    assert cluster.helm("uninstall", "narrow", "--namespace", RELEASE_NAMESPACE).returncode == 0
