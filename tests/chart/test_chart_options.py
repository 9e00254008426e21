"""The chart's optional parts and its refusals: ServiceMonitor, PodDisruptionBudget,
NetworkPolicy, the API token, contradictory or unknown values, and the NOTES shown after install.
"""

from pathlib import Path

import pytest

from tests.chart.rendering import ALL_OPTIONS, STATIC, Chart, Rendered, RenderError, load_values

pytestmark = pytest.mark.timeout(300)  # the first test may install the tools (scripts/tools.sh)


def test_optional_objects_are_off_by_default_and_on_when_asked(
    default_render: Rendered, all_options_render: Rendered
) -> None:
    optional = ("ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy", "Secret")
    assert not [d["kind"] for d in default_render.docs if d["kind"] in optional]
    assert default_render.one("Deployment")["spec"]["replicas"] == 1
    monitor = all_options_render.one("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service_labels = all_options_render.one("Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    pdb = all_options_render.one("PodDisruptionBudget")
    pod_labels = all_options_render.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1


def test_network_policy_opens_only_the_http_port_and_reaches_vllm_and_the_api(
    all_options_render: Rendered,
) -> None:
    policy = all_options_render.one("NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(ingress["from"]) == 2
    vllm, api, dns, extra = policy["egress"]
    assert vllm["to"][0]["podSelector"] == {
        "matchLabels": {"model.aibrix.ai/kv-events-enabled": "true"}
    }
    assert vllm["ports"] == [
        {"port": 5557, "endPort": 5558, "protocol": "TCP"},
        {"port": 5600, "endPort": 5601, "protocol": "TCP"},
    ]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert {p["port"] for p in dns["ports"]} == {53}
    assert extra["to"] == [{"ipBlock": {"cidr": "192.168.10.0/24"}}]


def test_network_policy_lists_port_ranges_one_by_one_before_kubernetes_1_22(
    chart: Chart,
) -> None:
    # endPort is unknown to older API servers, which refuse the whole release because of it.
    rendered = chart.render(values=[ALL_OPTIONS], kube_version="1.21.0")
    vllm = rendered.one("NetworkPolicy")["spec"]["egress"][0]
    assert vllm["ports"] == [{"port": p, "protocol": "TCP"} for p in (5557, 5558, 5600, 5601)]
    too_wide = ["networkPolicy.enabled=true", "networkPolicy.egress.vllmPorts[0].port=5000",
                "networkPolicy.egress.vllmPorts[0].endPort=6000"]  # fmt: skip
    with pytest.raises(RenderError, match="too wide"):
        chart.render(sets=too_wide, kube_version="1.21.0")


def test_api_token_comes_from_a_secret_never_from_plain_env(
    static_render: Rendered, all_options_render: Rendered
) -> None:
    (plain,) = [v for v in static_render.container["env"] if v["name"] == "KVSYNC_API_TOKEN"]
    assert "value" not in plain
    token = load_values(STATIC)["config"]["apiToken"]
    assert static_render.env()["KVSYNC_API_TOKEN"] == token
    assert token not in static_render.text  # only its base64 form, in the Secret
    # An existing Secret is mounted read-only and named by KVSYNC_API_TOKEN_FILE.
    env = all_options_render.env()
    assert "KVSYNC_API_TOKEN" not in env
    mount = next(
        m for m in all_options_render.container["volumeMounts"] if m["name"] == "api-token"
    )
    assert mount["readOnly"] is True
    assert env["KVSYNC_API_TOKEN_FILE"] == mount["mountPath"] + "/token"
    volume = next(v for v in all_options_render.pod_spec["volumes"] if v["name"] == "api-token")
    assert volume["secret"]["secretName"] == "kvsync-api-token"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["config.apiToken=a", "apiTokenSecret.name=s"], "one of config.apiToken"),
        (["config.apiToken=a", "config.apiTokenFile=/f"], "one of config.apiToken"),
        (["config.endpoint={name=a}"], "need config.discovery: static"),
        (["podDisruptionBudget.enabled=true", "podDisruptionBudget.minAvailable=1",
          "podDisruptionBudget.maxUnavailable=1"], "not both"),
    ],
)  # fmt: skip
def test_contradictory_values_are_refused_with_a_reason(
    chart: Chart, sets: list[str], message: str
) -> None:
    with pytest.raises(RenderError, match=message):
        chart.render(sets=sets)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["config.replyPort=5558"], "Additional property replyPort is not allowed"),
        (["config.dpSize=0"], "config.dpSize"),
        (["config.discovery=dns"], "config.discovery"),
        (["config.httpPort=70000"], "config.httpPort"),
    ],
)
def test_values_schema_refuses_unknown_settings_and_bad_values(
    chart: Chart, sets: list[str], message: str
) -> None:
    # A misspelt setting would otherwise become an env var the daemon never reads.
    with pytest.raises(RenderError, match=message):
        chart.render(sets=sets)


def test_notes_tell_how_to_query_and_the_exact_vllm_flag(chart: Chart, chart_copy: Path) -> None:
    # helm template does not print NOTES.txt; render it through a scratch template instead.
    notes = (chart_copy / "templates" / "NOTES.txt").read_text()
    (chart_copy / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" }}' + notes + "{{- end }}"
    )
    (chart_copy / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "notes-under-test" . | quote }}\n'
    )
    rendered = chart.render(chart=chart_copy)
    text = rendered.one("ConfigMap")["data"]["notes"]
    assert (
        """--kv-events-config '{"enable_kv_cache_events":true,"publisher":"zmq","""
        """"endpoint":"tcp://*:5557","replay_endpoint":"tcp://*:5558"}'"""
    ) in text
    assert "model.aibrix.ai/kv-events-enabled=true" in text
    assert "model.aibrix.ai/name" in text
    assert "kvsync.io/replay-port" in text
    assert "port-forward svc/kvsync 8080:8080" in text
    assert "/v1/match" in text
