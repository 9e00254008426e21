"""A real kube-apiserver + etcd on loopback for the e2e tier, driven by scripts/kube-apiserver.sh.

``Cluster`` starts them on free ports in a temp dir, hands out API clients (admin, or any bearer
token such as a ServiceAccount's), restarts the apiserver (optionally with extra flags), compacts
etcd, and stops both by PID. Pod helpers create pods as a vLLM deployment would label them and
patch their status (there is no kubelet: the status subresource sets phase, IP and restarts).
"""

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from kvsync.model import Endpoint, EndpointId

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kube-apiserver.sh"
CACHE = Path(os.environ.get("KVSYNC_TEST_CACHE", Path.home() / ".cache" / "kvsync-test"))
APISERVER_BIN = CACHE / "bin" / "kube-apiserver"
MODEL_LABEL = "model.aibrix.ai/name"
ENABLED_LABEL = "model.aibrix.ai/kv-events-enabled"


def free_port(count: int = 1) -> int:
    """A port p such that p .. p+count-1 were all free a moment ago on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count < 65535 and all(_free(base + i) for i in range(1, count)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def eventually(check: Callable[[], bool], timeout_s: float = 20.0, what: str = "") -> None:
    """Poll ``check`` until it holds, failing after ``timeout_s`` (monotonic clock)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout_s}s: {what or check}")
        time.sleep(0.05)


class Cluster:
    """etcd + kube-apiserver started by the script; ``stop()`` stops both by PID."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.etcd_port = free_port(2)  # client and peer
        self.apiserver_port = free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        self.ca = str(run_dir / "certs" / "apiserver.crt")
        self.kubeconfig = str(run_dir / "kubeconfig")
        self.admin_token = ""

    def _script(self, command: str, extra_args: str = "") -> None:
        env = {
            **os.environ,
            "KVSYNC_ETCD_PORT": str(self.etcd_port),
            "KVSYNC_APISERVER_PORT": str(self.apiserver_port),
            "KVSYNC_APISERVER_ARGS": extra_args,
        }
        subprocess.run([str(SCRIPT), command, str(self.run_dir)], env=env, check=True, timeout=120)

    def start(self) -> None:
        self._script("start")
        values = dict(
            line.split("=", 1) for line in (self.run_dir / "env").read_text().splitlines()
        )
        self.admin_token = values["KVSYNC_E2E_TOKEN"]

    def restart_apiserver(self, extra_args: str = "") -> None:
        """Stop the apiserver (etcd keeps the data) and start it again, waiting for /readyz."""
        self._script("restart-apiserver", extra_args)

    def stop(self) -> None:
        self._script("stop")

    def api(self, token: str | None = None) -> client.ApiClient:
        """A client authenticated by ``token`` (default: the admin token)."""
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = self.ca
        configuration.api_key = {"authorization": f"Bearer {token or self.admin_token}"}
        return client.ApiClient(configuration)

    def etcd_revision(self) -> int:
        out = self._etcdctl("endpoint", "status", "--write-out=json")
        return int(json.loads(out)[0]["Status"]["header"]["revision"])

    def compact(self) -> int:
        """Compact etcd at its current revision; every older resourceVersion is gone (410)."""
        revision = self.etcd_revision()
        self._etcdctl("compact", str(revision))
        return revision

    def _etcdctl(self, *args: str) -> str:
        env = {**os.environ, "ETCDCTL_API": "3"}
        endpoints = f"--endpoints=http://127.0.0.1:{self.etcd_port}"
        done = subprocess.run(
            ["etcdctl", endpoints, *args], env=env, check=True, capture_output=True, timeout=30
        )
        return done.stdout.decode()


class Pods:
    """Pod helpers in one namespace, through the admin client."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace

    def create(
        self,
        name: str,
        *,
        model: str | None = "llama",
        enabled: bool = True,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        ip: str | None = None,
    ) -> None:
        all_labels = {ENABLED_LABEL: "true"} if enabled else {}
        if model is not None:
            all_labels[MODEL_LABEL] = model
        all_labels.update(labels or {})
        body = client.V1Pod(
            metadata=client.V1ObjectMeta(
                name=name, labels=all_labels, annotations=annotations or {}
            ),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="vllm", image="vllm/vllm-openai")]
            ),
        )
        self.core.create_namespaced_pod(self.namespace, body)
        if ip is not None:
            self.set_status(name, ip=ip)

    def set_status(self, name: str, *, ip: str, restarts: int = 0) -> None:
        """What a kubelet would report: Running, this IP, the container's restart count."""
        status: dict[str, Any] = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "containerStatuses": [
                {
                    "name": "vllm",
                    "ready": True,
                    "restartCount": restarts,
                    "image": "vllm/vllm-openai",
                    "imageID": "",
                    "state": {"running": {}},
                }
            ],
        }
        # a JSON merge patch replaces the lists (a strategic merge would append to podIPs)
        self.core.patch_namespaced_pod_status(
            name, self.namespace, {"status": status}, _content_type="application/merge-patch+json"
        )

    def patch_labels(self, name: str, labels: dict[str, str | None]) -> None:
        """Set labels; a None value removes that label."""
        self.core.patch_namespaced_pod(name, self.namespace, {"metadata": {"labels": labels}})

    def delete(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)


class RecordingSink:
    """Stands in for the subscriber manager: the endpoints it would follow, and every command."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.endpoints: dict[EndpointId, Endpoint] = {}
        self.log: list[tuple[str, EndpointId]] = []

    def set_endpoint(self, endpoint: Endpoint) -> None:
        with self._lock:
            self.endpoints[endpoint.id] = endpoint
            self.log.append(("set", endpoint.id))

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        with self._lock:
            self.endpoints.pop(endpoint_id, None)
            self.log.append(("remove", endpoint_id))

    def snapshot(self) -> dict[EndpointId, Endpoint]:
        with self._lock:
            return dict(self.endpoints)

    def commands(self) -> list[tuple[str, EndpointId]]:
        with self._lock:
            return list(self.log)
