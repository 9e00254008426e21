"""The Dynamo / Mooncake-compatible routes, called as their routers call them, against the real
daemon and a simulated fleet: the same answers as /v1/match."""

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvsync.daemon.config import Settings
from kvsync.daemon.runtime import Daemon
from kvsync.sim.fleet import Fleet
from kvsync.sim.workload import Mix

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = "sim-model"


def poll(check: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling a condition with a deadline, not waiting for a socket


@pytest.fixture(name="fleet")
def _fleet() -> Iterator[Fleet]:
    with Fleet(pods=3, dp_sizes=(1, 2), seed=11) as fleet:
        yield fleet


def _daemon(fleet: Fleet | None) -> Daemon:
    settings = Settings(
        discovery="static",
        endpoint=() if fleet is None else tuple(fleet.endpoints()),
        http_host="127.0.0.1",
        http_port=0,
        log_level="error",
    )
    daemon = Daemon(settings)
    daemon.start()
    return daemon


def _caught_up(http: httpx.Client, fleet: Fleet) -> bool:
    """Every endpoint's last applied seq is its publisher's last published seq."""
    pods = http.get("/v1/pods").json()["pods"]
    last = {(p["pod"], p["dp_rank"]): p["last_seq"] for p in pods}
    for endpoint in fleet.ids:
        published = fleet.publisher(endpoint).stats.next_seq - 1
        if published >= 0 and last.get((endpoint.pod, endpoint.dp_rank)) != published:
            return False
    return True


def _by_match(http: httpx.Client, tokens: list[int]) -> dict[str, dict[str, int]]:
    body = {"model": MODEL, "token_ids": tokens}
    scores: dict[str, dict[str, int]] = {}
    for match in http.post("/v1/match", json=body).json()["matches"]:
        scores.setdefault(match["pod"], {})[str(match["dp_rank"])] = match["matched_tokens"]
    return scores


def test_query_answers_the_same_as_v1_match_on_the_same_fleet(fleet: Fleet) -> None:
    daemon = _daemon(fleet)
    try:
        fleet.wait_for_subscribers()
        fleet.step(60)
        fleet.flush()
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            poll(lambda: _caught_up(http, fleet), what="the daemon to catch up")
            compared = 0
            for _ in range(40):
                tokens = list(fleet.sample_query().token_ids)
                dynamo = http.post("/query", json={"model_name": MODEL, "token_ids": tokens})
                assert dynamo.status_code == 200
                answer = dynamo.json()
                assert answer["scores"] == _by_match(http, tokens)
                for instance, summary in answer["instances"].items():
                    assert summary["dp"] == answer["scores"][instance]
                    assert summary["longest_matched"] == max(summary["dp"].values())
                ranks = [n for by_rank in answer["scores"].values() for n in by_rank.values()]
                deepest = max(ranks, default=0) // fleet.block_size
                assert len(answer["frequencies"]) == deepest
                compared += bool(answer["scores"])
                mooncake = http.post("/query", json={"model": MODEL, "token_ids": tokens}).json()
                assert {pod: entry["DP"] for pod, entry in mooncake["default"].items()} == answer[
                    "scores"
                ]
                for entry in mooncake["default"].values():
                    assert entry["longest_matched"] == max(entry["DP"].values())
            assert compared > 5  # the samples hit something
            assert http.get("/health").status_code == 200
            workers = http.get("/workers").json()
            assert {w["instance_id"] for w in workers} == {e.pod for e in fleet.ids}
            assert {w["status"] for w in workers} == {"active"}
            assert {w["source"] for w in workers} == {"discovery"}
    finally:
        daemon.stop(2.0)


def test_register_query_unregister_as_a_dynamo_client(fleet: Fleet) -> None:
    daemon = _daemon(None)  # no static endpoints: every publisher comes by /register
    try:
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            instance_of: dict[str, int] = {}
            for number, endpoint in enumerate(fleet.endpoints(), start=1):
                instance = number if endpoint.id.dp_rank == 0 else instance_of[endpoint.id.pod]
                instance_of[endpoint.id.pod] = instance
                body = {
                    "instance_id": instance,
                    "endpoint": endpoint.pub,
                    "replay_endpoint": endpoint.replay,
                    "model_name": MODEL,
                    "block_size": fleet.block_size,
                    "dp_rank": endpoint.id.dp_rank,
                }
                registered = http.post("/register", json=body)
                assert registered.status_code == 201, registered.text
                assert registered.json() == {"status": "ok"}  # Dynamo 1.6.1's answer
                again = http.post("/register", json=body)
                assert again.status_code == 409
                assert "already registered" in again.json()["error"]
            fleet.wait_for_subscribers()
            poll(
                lambda: {w["status"] for w in http.get("/workers").json()} == {"active"},
                what="every listener active",
            )
            workers = http.get("/workers").json()
            assert sorted(w["instance_id"] for w in workers) == [1, 2, 4]
            two_ranks = next(w for w in workers if len(w["endpoints"]) == 2)
            assert set(two_ranks["listeners"]) == {"0", "1"}
            assert {w["source"] for w in workers} == {"zmq"}
            assert {(w["routing_group"], w["block_size"]) for w in workers} == {("default", 16)}
            fleet.step(40)
            fleet.flush()
            query = fleet.sample_query()
            for _ in range(50):
                if fleet.ground_truth(query):
                    break
                query = fleet.sample_query()
            truth = fleet.ground_truth(query)
            expected = {
                str(instance_of[e.pod]): {str(e.dp_rank): n * fleet.block_size}
                for e, n in truth.items()
            }

            def answered() -> bool:
                body = {"model_name": MODEL, "token_ids": list(query.token_ids)}
                scores = http.post("/query", json=body).json()["scores"]
                flat = {(i, r): n for i, ranks in scores.items() for r, n in ranks.items()}
                want = {(i, r): n for i, ranks in expected.items() for r, n in ranks.items()}
                return flat == want

            poll(answered, what="/query to answer the ground truth")
            gone = http.post("/unregister", json={"instance_id": 2, "modelname": MODEL})
            assert gone.status_code == 200  # Mooncake's field name: Mooncake's answer
            assert gone.json() == {
                "status": "unregistered successfully",
                "removed_instances": ["2|default|0", "2|default|1"],
            }
            poll(
                lambda: (
                    sorted(str(w["instance_id"]) for w in http.get("/workers").json()) == ["1", "4"]
                ),
                what="instance 2 to be gone",
            )
            again = http.post("/unregister", json={"instance_id": 2, "model_name": MODEL})
            assert again.status_code == 404
    finally:
        daemon.stop(2.0)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"instance_id": 9, "endpoint": "tcp://127.0.0.1:1"}, 422, "model_name"),
        ({"instance_id": 9, "endpoint": "127.0.0.1:1", "model_name": "m"}, 422, "tcp://host:port"),
        ({"instance_id": 9, "endpoint": "tcp://h:1", "model_name": "m", "block_size": 0}, 422,
         "Expected `int` >= 1"),
        ({"instance_id": 9, "endpoint": "tcp://h:1", "modelname": "m", "additionalsalt": "w8"},
         422, "additionalsalt"),
        ({"instance_id": 9, "endpoint": "tcp://h:1", "model_name": "m", "colour": 1}, 422,
         "unknown field"),
        ({"instance_id": 1.5, "endpoint": "tcp://h:1", "model_name": "m"}, 422, "Expected"),
    ],
)  # fmt: skip
def test_bad_registrations_are_refused_with_a_reason(body: Any, status: int, message: str) -> None:
    daemon = _daemon(None)
    try:
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            answer = http.post("/register", json=body)
            assert answer.status_code == status
            assert message in answer.json()["error"]
            assert http.get("/workers").json() == []
    finally:
        daemon.stop(2.0)


def test_a_registration_may_not_take_over_a_discovered_pod(fleet: Fleet) -> None:
    daemon = _daemon(fleet)
    try:
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            taken = fleet.ids[0]
            poll(lambda: len(http.get("/workers").json()) == 3, what="the discovered pods")
            body = {"instance_id": taken.pod, "endpoint": "tcp://127.0.0.1:1", "model_name": "m"}
            answer = http.post("/register", json=body)
            assert answer.status_code == 409
            bad_query = http.post("/query", json={"token_ids": [1, 2]})
            assert bad_query.status_code == 422
            assert "model_name" in bad_query.json()["error"]
            assert (
                http.post(
                    "/query", content=b"{", headers={"content-type": "application/json"}
                ).status_code
                == 400
            )
    finally:
        daemon.stop(2.0)


DYNAMO_PYTHON = (
    Path(os.environ.get("KVSYNC_TEST_CACHE", str(Path.home() / ".cache" / "kvsync-test")))
    / "dynamo-venv"
    / "bin"
    / "python"
)


@pytest.mark.skipif(not DYNAMO_PYTHON.exists(), reason="no Dynamo (scripts/dynamo-indexer.sh)")
def test_one_dynamo_client_gets_the_same_answers_from_dynamo_and_kvsync() -> None:
    """The same calls, in the same order, against a running Dynamo 1.6.1 and kvsync (traffic
    without LoRA adapters or salts: Dynamo keeps neither apart)."""
    with Fleet(pods=3, dp_sizes=(1, 2), seed=11, adapter=None, mix=Mix(salt_share=0.0)) as fleet:
        _same_answers(fleet)


def _same_answers(fleet: Fleet) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dynamo = subprocess.Popen(
        [str(DYNAMO_PYTHON), "-m", "dynamo.indexer", "--port", str(port), "--block-size", "16"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DYN_LOG": "warn"},
    )  # fmt: skip
    daemon = _daemon(None)
    try:
        servers = {"dynamo": f"http://127.0.0.1:{port}", "kvsync": daemon.url}
        clients = {name: httpx.Client(base_url=url, timeout=10) for name, url in servers.items()}

        def healthy() -> bool:
            try:
                return clients["dynamo"].get("/health").status_code == 200
            except httpx.TransportError:
                return False

        poll(healthy, timeout=60, what="Dynamo's /health")
        answers: dict[str, list[Any]] = {name: [] for name in servers}
        instances = {pod: n for n, pod in enumerate(sorted({e.pod for e in fleet.ids}), start=1)}
        for name, http in clients.items():
            for endpoint in fleet.endpoints():
                body = {
                    "instance_id": instances[endpoint.id.pod], "endpoint": endpoint.pub,
                    "model_name": MODEL, "block_size": fleet.block_size,
                    "replay_endpoint": endpoint.replay, "dp_rank": endpoint.id.dp_rank,
                }  # fmt: skip
                answer = http.post("/register", json=body)
                answers[name].append((answer.status_code, answer.json()))
            poll(
                lambda http=http: (
                    len(http.get("/workers").json()) == len(instances)
                    and {w["status"] for w in http.get("/workers").json()} == {"active"}
                ),
                what=f"{name}'s listeners",
            )
        for endpoint_id in fleet.ids:  # both have subscribed to every publisher
            fleet.publisher(endpoint_id).wait_for_subscriber(10, count=2)
        fleet.step(60)
        fleet.flush()
        assert answers["dynamo"] == answers["kvsync"]  # 201 {"status": "ok"} each
        workers = {name: http.get("/workers").json() for name, http in clients.items()}
        assert {tuple(sorted(w)) for w in workers["dynamo"]} == {
            tuple(sorted(w)) for w in workers["kvsync"]
        }
        samples = [fleet.sample_query() for _ in range(30)]

        def scores(name: str, tokens: list[int]) -> dict[str, dict[str, int]]:
            body = {"model_name": MODEL, "token_ids": tokens}
            answer = clients[name].post("/query", json=body).json()
            found: dict[str, dict[str, int]] = {
                instance: {rank: n for rank, n in ranks.items() if n}
                for instance, ranks in answer["scores"].items()
            }
            return {instance: ranks for instance, ranks in found.items() if ranks}

        def holders(name: str, tokens: list[int]) -> set[tuple[str, str]]:
            return {(i, r) for i, ranks in scores(name, tokens).items() for r in ranks}

        def agree() -> bool:
            """The same holders from both; kvsync's depths are the ground truth's (Dynamo's
            may be shorter on these streams: its answers are its own business here)."""
            for q in samples:
                tokens = list(q.token_ids)
                truth = {
                    (str(instances[e.pod]), str(e.dp_rank)): n * fleet.block_size
                    for e, n in fleet.ground_truth(q).items()
                }
                kvsync = scores("kvsync", tokens)
                flat = {(i, r): n for i, ranks in kvsync.items() for r, n in ranks.items()}
                if flat != truth or holders("dynamo", tokens) != set(truth):
                    return False
            return True

        poll(agree, timeout=30, what="the same holders from both, kvsync's depths true")
        assert any(fleet.ground_truth(q) for q in samples)
        one = {"model_name": MODEL, "token_ids": list(samples[0].token_ids)}
        keys = {name: set(http.post("/query", json=one).json()) for name, http in clients.items()}
        assert keys["dynamo"] == keys["kvsync"] == {"scores", "frequencies", "instances"}
        for name, http in clients.items():
            gone = http.post("/unregister", json={"instance_id": 1, "model_name": MODEL})
            answers[name].append((gone.status_code, gone.json()))
        assert answers["dynamo"][-1] == answers["kvsync"][-1]
        for http in clients.values():
            http.close()
    finally:
        daemon.stop(2.0)
        dynamo.terminate()
        dynamo.wait(10)
