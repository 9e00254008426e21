"""The informer under exactly the RBAC the Helm chart grants, with a real ServiceAccount token."""

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils

from kvsync.model import EndpointId
from tests.e2e.cluster import CACHE, ROOT, Pods, RecordingSink, eventually
from tests.e2e.conftest import StartInformer

pytestmark = pytest.mark.e2e

HELM = CACHE / "bin" / "helm"


def render_chart_rbac(namespace: str, tmp_path: Path) -> list[dict[str, Any]]:
    """The chart's ServiceAccount, Role and RoleBinding for a release watching ``namespace``."""
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run scripts/tools.sh first (make e2e does)")
    env = {
        **os.environ,
        **{f"HELM_{d}_HOME": str(tmp_path / d) for d in ("CACHE", "CONFIG", "DATA")},
    }
    rendered = subprocess.run(
        [str(HELM), "template", "kv", str(ROOT / "charts" / "kvsync"), "--namespace", namespace,
         "--set", "config.discovery=kubernetes", "--set", f"config.namespace={{{namespace}}}"],
        env=env, check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip
    wanted = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in wanted]
    assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding", "ServiceAccount"]
    return docs


def service_account_token(admin: client.ApiClient, namespace: str, name: str) -> str:
    """A real bound token for the ServiceAccount (TokenRequest API), as a pod would mount."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    issued = client.CoreV1Api(admin).create_namespaced_service_account_token(
        name, namespace, request
    )
    token = issued.status.token if issued.status is not None else None
    assert token
    return token


def test_chart_rbac_suffices_and_without_list_the_error_is_clear(
    admin: client.ApiClient,
    namespace: str,
    pods: Pods,
    start_informer: StartInformer,
    tmp_path: Path,
) -> None:
    docs = render_chart_rbac(namespace, tmp_path)
    for doc in docs:
        utils.create_from_dict(admin, doc)  # type: ignore[no-untyped-call]  # untyped helper
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    token = service_account_token(admin, namespace, account)
    pods.create("vllm-0", ip="127.0.5.2")

    sink = RecordingSink()
    informer = start_informer(sink, token=token)
    eventually(informer.synced.is_set, what="synced with the chart's RBAC")
    eventually(lambda: EndpointId(f"{namespace}/vllm-0", 0) in sink.snapshot())
    assert informer.stats().errors == {}

    # the same account without "list": the informer says what is missing and never gets ready
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.patch_namespaced_role(
        role["metadata"]["name"],
        namespace,
        {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch"]}]},
    )
    denied_sink = RecordingSink()
    denied = start_informer(denied_sink, token=token)
    eventually(lambda: denied.stats().errors["http_403"] >= 2, what="403s counted and retried")
    message = denied.last_error() or ""
    assert "RBAC forbids listing or watching pods" in message
    assert f"namespace {namespace!r}" in message
    assert "grant get/list/watch on pods" in message
    assert not denied.synced.is_set()
    assert denied_sink.commands() == []
    assert denied.stats().relists >= 2  # it keeps trying, with backoff, in case RBAC is fixed
