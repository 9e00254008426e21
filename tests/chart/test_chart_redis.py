"""The chart beyond one machine: the index in Redis (index.backend, redis.url,
redis.existingSecret) and ingest shards (shards > 1: a StatefulSet whose pod index is the shard).

Rendered with ``helm template``; values-redis.yaml is the example docs/deploy.md points at. What
the rendered env means to the daemon is checked in test_settings_mapping.py.
"""

from typing import Any

import pytest

from tests.chart.rendering import Chart, Rendered, RenderError

pytestmark = pytest.mark.timeout(300)  # the first test may install the tools (scripts/tools.sh)

REDIS_URL = "redis://redis.example:6379"
PASSWORD_FILE = "/etc/kvsync/redis/password"  # noqa: S105  # a path, not a password


def _env_var(rendered: Rendered, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        var for var in rendered.container.get("env", []) if var["name"] == name
    ]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def _env_names(rendered: Rendered) -> set[str]:
    return {var["name"] for var in rendered.container.get("env", [])}


def test_memory_backend_by_default_one_deployment_no_redis_no_shards(
    default_render: Rendered,
) -> None:
    assert default_render.workload["kind"] == "Deployment"
    assert not default_render.kinds("StatefulSet")
    assert [s["metadata"]["name"] for s in default_render.kinds("Service")] == ["kvsync"]
    assert default_render.env()["KVSYNC_INDEX_BACKEND"] == "memory"
    names = _env_names(default_render)
    assert not {n for n in names if n.startswith(("KVSYNC_REDIS_", "KVSYNC_SHARD_"))}
    assert "redis-secret" not in {v["name"] for v in default_render.pod_spec["volumes"]}


def test_sharded_release_is_a_statefulset_whose_pod_index_is_the_shard(
    redis_render: Rendered,
) -> None:
    assert not redis_render.kinds("Deployment")
    workload = redis_render.workload
    assert workload["kind"] == "StatefulSet"
    spec = workload["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert _env_var(redis_render, "KVSYNC_SHARD_COUNT")["value"] == "3"
    assert _env_var(redis_render, "KVSYNC_SHARD_INDEX")["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    env = redis_render.env({"apps.kubernetes.io/pod-index": "1"})
    assert (env["KVSYNC_SHARD_INDEX"], env["KVSYNC_INDEX_BACKEND"]) == ("1", "redis")


def test_sharded_release_has_a_headless_service_and_the_lookup_service(
    redis_render: Rendered,
) -> None:
    services = {s["metadata"]["name"]: s["spec"] for s in redis_render.kinds("Service")}
    assert set(services) == {"kvsync", "kvsync-shards"}
    assert services["kvsync-shards"]["clusterIP"] == "None"
    assert redis_render.workload["spec"]["serviceName"] == "kvsync-shards"
    labels = redis_render.workload["spec"]["template"]["metadata"]["labels"]
    for spec in services.values():  # lookups go to every shard: each answers for all endpoints
        assert spec["selector"].items() <= labels.items()


def test_redis_password_and_ca_are_mounted_files_from_the_existing_secret(
    redis_render: Rendered,
) -> None:
    volume = next(v for v in redis_render.pod_spec["volumes"] if v["name"] == "redis-secret")
    assert volume["secret"] == {
        "secretName": "kvsync-redis",
        "items": [{"key": "password", "path": "password"}, {"key": "ca.crt", "path": "ca.crt"}],
    }
    mount = next(m for m in redis_render.container["volumeMounts"] if m["name"] == "redis-secret")
    assert mount == {"name": "redis-secret", "mountPath": "/etc/kvsync/redis", "readOnly": True}
    env = redis_render.env()
    assert env["KVSYNC_REDIS_URL"].startswith("rediss://")
    assert env["KVSYNC_REDIS_PASSWORD_FILE"] == PASSWORD_FILE
    assert env["KVSYNC_REDIS_TLS_CA_FILE"] == "/etc/kvsync/redis/ca.crt"
    # The password never travels as an env value, and the chart creates no Secret of its own.
    assert not [
        v for v in redis_render.container["env"] if "secretKeyRef" in v.get("valueFrom", {})
    ]
    assert not redis_render.kinds("Secret")


def test_redis_without_secret_or_shards_is_a_deployment_with_the_url_only(chart: Chart) -> None:
    rendered = chart.render(
        sets=["index.backend=redis", f"redis.url={REDIS_URL}", "replicaCount=2"]
    )
    assert rendered.workload["kind"] == "Deployment"
    assert rendered.workload["spec"]["replicas"] == 2
    env = rendered.env()
    assert (env["KVSYNC_INDEX_BACKEND"], env["KVSYNC_REDIS_URL"]) == ("redis", REDIS_URL)
    assert not {n for n in _env_names(rendered) if n.startswith("KVSYNC_SHARD_")}
    assert "KVSYNC_REDIS_PASSWORD_FILE" not in env
    assert "redis-secret" not in {v["name"] for v in rendered.pod_spec["volumes"]}


def test_password_without_private_ca_mounts_the_password_only(chart: Chart) -> None:
    rendered = chart.render(
        sets=["index.backend=redis", f"redis.url={REDIS_URL}", "redis.existingSecret=pw"]
    )
    volume = next(v for v in rendered.pod_spec["volumes"] if v["name"] == "redis-secret")
    assert volume["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert "KVSYNC_REDIS_TLS_CA_FILE" not in rendered.env()


def test_network_policy_opens_the_redis_ports_only_with_the_redis_backend(
    redis_render: Rendered, chart: Chart
) -> None:
    egress = redis_render.one("NetworkPolicy")["spec"]["egress"]
    redis_rules = [r for r in egress if r.get("ports") == [{"port": 6379, "protocol": "TCP"}]]
    assert redis_rules == [
        {
            "ports": [{"port": 6379, "protocol": "TCP"}],
            "to": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "redis"}}}
            ],
        }
    ]
    memory = chart.render(sets=["networkPolicy.enabled=true"]).one("NetworkPolicy")
    assert not [
        r
        for r in memory["spec"]["egress"]
        if {"port": 6379, "protocol": "TCP"} in r.get("ports", [])
    ]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["shards=2"], "shards: 2 needs index.backend: redis"),
        (["index.backend=redis"], "index.backend: redis needs redis.url"),
        (["index.backend=redis", f"redis.url={REDIS_URL}", "shards=2", "replicaCount=3"],
         "with shards > 1 the StatefulSet runs one pod per shard"),
        (["index.backend=redis", f"redis.url={REDIS_URL}", "redis.caCert=true"],
         "redis.caCert reads ca.crt from redis.existingSecret"),
        (["index.backend=redis", f"redis.url={REDIS_URL}", "redis.caCert=true",
          "redis.existingSecret=s"], "redis.url must be a rediss:// URL"),
    ],
)  # fmt: skip
def test_contradictory_redis_and_shard_values_are_refused(
    chart: Chart, sets: list[str], message: str
) -> None:
    with pytest.raises(RenderError, match=message):
        chart.render(sets=sets)


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["index.backend=etcd"], "index.backend"),
        (["shards=0"], "shards"),
        (["redis.url=http://redis:6379"], "redis.url"),
        (["redis.password=x"], "Additional property password is not allowed"),
        (["config.indexBackend=redis"], "Additional property indexBackend is not allowed"),
    ],
)
def test_values_schema_refuses_bad_redis_and_shard_values(
    chart: Chart, sets: list[str], message: str
) -> None:
    with pytest.raises(RenderError, match=message):
        chart.render(sets=sets)
