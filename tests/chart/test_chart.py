"""The Helm chart as a cluster admin would check it: lint, schema, privileges, probes, shutdown.

Renders charts/kvsync with ``helm template`` (defaults, ci/all-options-values.yaml,
ci/static-values.yaml and the sharded Redis example values-redis.yaml) and asserts on the
manifests. Skips only when helm cannot be installed.
"""

import subprocess
from pathlib import Path

import pytest

from tests.chart.rendering import (
    ALL_OPTIONS,
    CHART,
    REDIS,
    STATIC,
    Chart,
    Rendered,
    RenderError,
    Tools,
)

pytestmark = pytest.mark.timeout(300)  # the first test may install the tools (scripts/tools.sh)

VALUES_FILES = {"default": None, "all-options": ALL_OPTIONS, "static": STATIC, "redis": REDIS}
VALIDATE_K8S_VERSION = "1.30.0"  # one of the schema sets kubernetes-validate bundles
POD_READER_RULES = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


def renders(chart: Chart) -> dict[str, Rendered]:
    return {
        name: chart.render(values=[path] if path else []) for name, path in VALUES_FILES.items()
    }


@pytest.mark.parametrize("values", VALUES_FILES.values(), ids=VALUES_FILES.keys())
def test_helm_lint_strict_passes(chart: Chart, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    proc = chart.helm(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout


@pytest.mark.parametrize("values", VALUES_FILES.values(), ids=VALUES_FILES.keys())
def test_rendered_manifests_pass_strict_schema_validation(
    chart: Chart, tools: Tools, values: Path | None, tmp_path: Path
) -> None:
    rendered = chart.render(values=[values] if values else [])
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(rendered.text)
    proc = subprocess.run(
        [tools.kubernetes_validate, "--strict", "--quiet", "-k", VALIDATE_K8S_VERSION, manifests],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pod_and_container_run_unprivileged_in_every_configuration(chart: Chart) -> None:
    for name, rendered in renders(chart).items():
        pod = rendered.pod_spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == 10001, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        container = rendered.container["securityContext"]
        assert container["runAsNonRoot"] is True, name
        assert container["runAsUser"] == 10001, name
        assert container["readOnlyRootFilesystem"] is True, name
        assert container["allowPrivilegeEscalation"] is False, name
        assert container["capabilities"] == {"drop": ["ALL"]}, name
        assert container["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "privileged" not in container, name
        # Resources are always bounded: a memory limit, and requests the scheduler can use.
        assert rendered.container["resources"]["limits"]["memory"], name
        assert rendered.container["resources"]["requests"]["cpu"], name


def test_watching_all_namespaces_grants_one_cluster_role_to_read_pods(
    default_render: Rendered,
) -> None:
    (role,) = default_render.kinds("ClusterRole")
    assert role["rules"] == POD_READER_RULES
    (binding,) = default_render.kinds("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = default_render.one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": "kvsync-system"}
    ]
    assert default_render.pod_spec["serviceAccountName"] == account["name"]
    assert default_render.pod_spec["automountServiceAccountToken"] is True
    assert not default_render.kinds("Role")
    assert not default_render.kinds("RoleBinding")


def test_listed_namespaces_get_a_role_each_and_no_cluster_role(
    all_options_render: Rendered,
) -> None:
    roles = all_options_render.kinds("Role")
    bindings = all_options_render.kinds("RoleBinding")
    namespaces = ["inference", "inference-canary"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces
    assert sorted(b["metadata"]["namespace"] for b in bindings) == namespaces
    for role in roles:
        assert role["rules"] == POD_READER_RULES
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "kvsync-reader", "namespace": "kvsync-system"}
        ]
    assert not all_options_render.kinds("ClusterRole")
    assert not all_options_render.kinds("ClusterRoleBinding")


def test_every_rbac_rule_anywhere_is_read_only_on_pods(chart: Chart) -> None:
    for name, rendered in renders(chart).items():
        for kind in ("Role", "ClusterRole"):
            for role in rendered.kinds(kind):
                assert role["rules"] == POD_READER_RULES, name


def test_no_service_link_env_can_shadow_a_kvsync_setting(chart: Chart) -> None:
    # The kubelet would set KVSYNC_REPLAY_PORT=tcp://… for a Service named kvsync-replay.
    for name, rendered in renders(chart).items():
        assert rendered.pod_spec["enableServiceLinks"] is False, name


def test_static_discovery_gets_no_rbac_and_no_api_token(static_render: Rendered) -> None:
    assert not [d for d in static_render.docs if d["kind"] in RBAC_KINDS]
    assert static_render.pod_spec["automountServiceAccountToken"] is False


def test_probes_hit_livez_and_readyz_on_the_http_port(chart: Chart) -> None:
    for name, rendered in renders(chart).items():
        container = rendered.container
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
        (port,) = container["ports"]
        assert port["name"] == "http"
        assert str(port["containerPort"]) == rendered.env()["KVSYNC_HTTP_PORT"], name
        for service in rendered.kinds("Service"):  # and the shards' headless one
            assert service["spec"]["ports"][0]["targetPort"] == "http", name
        assert rendered.kinds("Service"), name


def grace_budget(env: dict[str, str]) -> float:
    return float(env["KVSYNC_DRAIN_SECONDS"]) + 4 * float(env["KVSYNC_STOP_TIMEOUT_SECONDS"])


def test_grace_period_outlasts_drain_and_stop_budgets(chart: Chart, tmp_path: Path) -> None:
    for name, rendered in renders(chart).items():
        grace = rendered.pod_spec["terminationGracePeriodSeconds"]
        assert grace >= grace_budget(rendered.env()) + 1, name
    # Fractional budgets round up; the margin is added on top.
    values = tmp_path / "fractional.yaml"
    values.write_text(
        "config:\n  drainSeconds: 7.2\n  stopTimeoutSeconds: 4.1\n"
        "terminationGraceMarginSeconds: 2\n"
    )
    rendered = chart.render(values=[values])
    assert rendered.pod_spec["terminationGracePeriodSeconds"] == 8 + 4 * 5 + 2


def test_grace_period_below_the_shutdown_budget_is_refused(chart: Chart) -> None:
    # defaults: drain 5 s + 4 x stop 5 s = 25 s
    assert (
        chart.render(sets=["terminationGracePeriodSeconds=25"]).pod_spec[
            "terminationGracePeriodSeconds"
        ]
        == 25
    )
    with pytest.raises(RenderError, match="terminationGracePeriodSeconds"):
        chart.render(sets=["terminationGracePeriodSeconds=24"])
