"""`kvsync serve --discovery kubernetes` as a process against a real apiserver and publishers."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvsync.model import BlockStored, encode_tokens
from kvsync.sim.publisher import Publisher
from tests.e2e.cluster import ROOT, Cluster, Pods, eventually

pytestmark = pytest.mark.e2e

TOKENS = list(range(32))


def started_url(log_path: Path) -> str | None:
    """The daemon's URL from its ``daemon_started`` log line (it binds port 0: no race)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if '"daemon_started"' in line:
            return str(json.loads(line)["url"])
    return None


@pytest.fixture(name="serve")
def _serve(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[str]:
    """The daemon in its own process, watching the test's namespace; yields its base URL."""
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig, "KVSYNC_DRAIN_SECONDS": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kvsync", "serve", "--discovery", "kubernetes",
         "--namespace", namespace, "--http-host", "127.0.0.1", "--http-port", "0"],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        eventually(lambda: started_url(log_path) is not None or process.poll() is not None,
                   timeout_s=60, what="daemon started")  # fmt: skip
        url = started_url(log_path)
        assert url is not None, log_path.read_text()[-3000:]
        yield url
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        sys.stdout.write(log_path.read_text(errors="replace")[-3000:])  # shown on failure


def answers(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(120)
def test_serve_follows_pods_and_answers_matches(serve: str, pods: Pods, namespace: str) -> None:
    publishers = [Publisher(host=f"127.0.8.{n}", pub_port=0, replay_port=None) for n in (2, 3)]
    ports = [p.pub_address.rsplit(":", 1)[1] for p in publishers]
    try:
        for name, host, port in (
            ("vllm-a", "127.0.8.2", ports[0]),
            ("vllm-b", "127.0.8.3", ports[1]),
        ):
            pods.create(name, annotations={"kvsync.io/pub-port": port}, ip=host)
        eventually(lambda: answers(serve, "/readyz"), what="ready (first list synced)")
        for number, publisher in enumerate(publishers):
            publisher.wait_for_subscriber()
            publisher.publish(
                [BlockStored(block_hashes=[number * 10, number * 10 + 1],
                             parent_block_hash=None, token_ids=encode_tokens(TOKENS),
                             block_size=16)]
            )  # fmt: skip

        def matches() -> dict[str, int]:
            body = {"model": "llama", "token_ids": TOKENS}
            answer = httpx.post(serve + "/v1/match", json=body, timeout=5).json()
            return {m["pod"]: m["matched_blocks"] for m in answer["matches"]}

        a, b = f"{namespace}/vllm-a", f"{namespace}/vllm-b"
        eventually(lambda: matches() == {a: 2, b: 2}, what="both pods match two blocks")
        listed = httpx.get(serve + "/v1/pods", timeout=5).json()["pods"]
        assert sorted((p["pod"], p["dp_rank"], p["model"], p["pub"]) for p in listed) == [
            (a, 0, "llama", f"tcp://127.0.8.2:{ports[0]}"),
            (b, 0, "llama", f"tcp://127.0.8.3:{ports[1]}"),
        ]

        pods.delete("vllm-a")
        eventually(lambda: matches() == {b: 2}, what="the deleted pod's blocks are gone")
        listed = httpx.get(serve + "/v1/pods", timeout=5).json()["pods"]
        assert [p["pod"] for p in listed] == [b]
        metrics = httpx.get(serve + "/metrics", timeout=5).text
        assert "kvsync_informer_relists_total 1.0" in metrics
    finally:
        for publisher in publishers:
            publisher.close()
