"""`kvsync serve --discovery kubernetes` as a process against a real apiserver and publishers."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kvsync.model import BlockStored
from kvsync.sim.publisher import Publisher
from tests.e2e.cluster import ROOT, Cluster, Pods, eventually, free_port

pytestmark = pytest.mark.e2e

TOKENS = list(range(32))


@pytest.fixture(name="serve")
def _serve(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[str]:
    """The daemon in its own process, watching the test's namespace; yields its base URL."""
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "KUBECONFIG": cluster.kubeconfig, "KVSYNC_DRAIN_SECONDS": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "kvsync", "serve", "--discovery", "kubernetes",
         "--namespace", namespace, "--http-host", "127.0.0.1", "--http-port", str(port)],
        env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, (tmp_path / "serve.log").read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def answers(url: str, path: str) -> bool:
    try:
        return httpx.get(url + path, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(120)
def test_serve_follows_pods_and_answers_matches(serve: str, pods: Pods, namespace: str) -> None:
    port = free_port()
    publishers = [Publisher(host=f"127.0.8.{n}", pub_port=port, replay_port=None) for n in (2, 3)]
    try:
        notes = {"kvsync.io/pub-port": str(port)}
        pods.create("vllm-a", annotations=notes, ip="127.0.8.2")
        pods.create("vllm-b", annotations=notes, ip="127.0.8.3")
        eventually(lambda: answers(serve, "/readyz"), what="ready (first list synced)")
        for number, publisher in enumerate(publishers):
            publisher.wait_for_subscriber()
            publisher.publish(
                [BlockStored(block_hashes=[number * 10, number * 10 + 1],
                             parent_block_hash=None, token_ids=TOKENS, block_size=16)]
            )  # fmt: skip

        def matches() -> dict[str, int]:
            body = {"model": "llama", "token_ids": TOKENS}
            answer = httpx.post(serve + "/v1/match", json=body, timeout=5).json()
            return {m["pod"]: m["matched_blocks"] for m in answer["matches"]}

        a, b = f"{namespace}/vllm-a", f"{namespace}/vllm-b"
        eventually(lambda: matches() == {a: 2, b: 2}, what="both pods match two blocks")
        listed = httpx.get(serve + "/v1/pods", timeout=5).json()["pods"]
        assert sorted((p["pod"], p["dp_rank"], p["model"], p["pub"]) for p in listed) == [
            (a, 0, "llama", f"tcp://127.0.8.2:{port}"),
            (b, 0, "llama", f"tcp://127.0.8.3:{port}"),
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
