"""Speculative hints and explain against the real daemon and simulated publishers, in scripted
scenarios: a hint shows apart, expires, is confirmed or reset, and never leaks into
matched_blocks; explain names removal (with its seq), reset, capacity eviction and replaying."""

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import zmq

from kvsync.daemon.config import Settings
from kvsync.daemon.runtime import Daemon
from kvsync.model import BlockRemoved, BlockStored, EndpointId, Event, encode_tokens
from kvsync.sim.fleet import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = "sim-model"
BS = 16
PROMPT = list(range(1000, 1000 + 4 * BS))  # four full blocks
OTHER = list(range(5000, 5000 + 5 * BS))


def poll(check: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling a condition with a deadline, not waiting for a socket


@dataclass
class Served:
    fleet: Fleet
    daemon: Daemon
    http: httpx.Client

    def publish(self, endpoint: EndpointId, events: Sequence[Event]) -> int:
        """Publish one batch from ``endpoint``; wait until it is applied; return its seq."""
        publisher = self.fleet.publisher(endpoint)
        publisher.publish(events)
        publisher.flush()  # on the wire: its seq is taken
        seq = publisher.stats.next_seq - 1

        def applied() -> bool:
            for pod in self.http.get("/v1/pods").json()["pods"]:
                if (pod["pod"], pod["dp_rank"]) == endpoint:
                    return bool(pod["last_seq"] is not None and pod["last_seq"] >= seq)
            return False

        poll(applied, what=f"seq {seq} of {endpoint.pod} applied")
        return seq

    def restart(self, endpoint: EndpointId, events: Sequence[Event]) -> None:
        """Restart the pod (seq back to 0), publish ``events``; wait for kvsync's reset."""
        self.fleet.restart(endpoint.pod)
        self.fleet.publisher(endpoint).publish(events)

        def reset() -> bool:
            for pod in self.http.get("/v1/pods").json()["pods"]:
                if (pod["pod"], pod["dp_rank"]) == endpoint:
                    return bool(pod["reset_reasons"].get("restart"))
            return False

        poll(reset, what=f"{endpoint.pod} reset")

    def match(self, tokens: list[int] = PROMPT) -> dict[str, Any]:
        answer = self.http.post("/v1/match", json={"model": MODEL, "token_ids": tokens})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    def explain(self, tokens: list[int] = PROMPT) -> dict[tuple[str, int], dict[str, Any]]:
        answer = self.http.post("/v1/explain", json={"model": MODEL, "token_ids": tokens})
        assert answer.status_code == 200, answer.text
        return {(e["pod"], e["dp_rank"]): e for e in answer.json()["endpoints"]}


def stored(tokens: list[int], first_hash: int, parent: int | None = None) -> BlockStored:
    blocks = len(tokens) // BS
    return BlockStored(
        block_hashes=[first_hash + i for i in range(blocks)],
        parent_block_hash=parent,
        token_ids=encode_tokens(tokens),
        block_size=BS,
    )


@contextmanager
def serving(**settings: Any) -> Iterator[Served]:
    with Fleet(pods=2, dp_sizes=(1,), seed=2, block_size=BS) as fleet:
        endpoints = settings.pop("endpoints", None) or fleet.endpoints()
        config = Settings(
            discovery="static",
            endpoint=tuple(endpoints),
            http_host="127.0.0.1",
            http_port=0,
            log_level="error",
            **settings,
        )
        daemon = Daemon(config)
        daemon.start()
        try:
            fleet.wait_for_subscribers()
            with httpx.Client(base_url=daemon.url, timeout=10) as http:
                yield Served(fleet, daemon, http)
        finally:
            daemon.stop(2.0)


def _by_pod(answer: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {m["pod"]: (m["matched_blocks"], m["speculative_blocks"]) for m in answer["matches"]}


def test_a_hint_shows_as_speculative_apart_from_matched_and_expires() -> None:
    with serving() as served:
        a, b = served.fleet.ids
        served.publish(a, [stored(PROMPT[: 2 * BS], 1)])  # a holds two blocks
        hinted = served.http.post(
            "/v1/hint",
            json={"model": MODEL, "token_ids": PROMPT, "pod": a.pod, "ttl_s": 0.5},
        )
        assert hinted.status_code == 200, hinted.text
        assert (hinted.json()["matched_blocks"], hinted.json()["hinted_blocks"]) == (2, 2)
        other = {"model": MODEL, "token_ids": PROMPT, "pod": b.pod, "ttl_s": 0.5}
        assert served.http.post("/v1/hint", json=other).json()["hinted_blocks"] == 4
        answer = served.match()
        assert _by_pod(answer) == {a.pod: (2, 2), b.pod: (0, 4)}
        only_b = next(m for m in answer["matches"] if m["pod"] == b.pod)
        assert (only_b["matched_tokens"], only_b["percent"], only_b["score"]) == (0, 0, 0.0)
        assert answer["matches"][0]["pod"] == a.pod  # the real match ranks first
        # a /query answer (Dynamo's) has no speculative notion: it never sees hints
        scores = served.http.post("/query", json={"model_name": MODEL, "token_ids": PROMPT})
        assert scores.json()["scores"] == {a.pod: {"0": 2 * BS}}
        poll(lambda: _by_pod(served.match()) == {a.pod: (2, 0)}, what="the hints to expire")


def test_a_stored_block_confirms_its_hint_and_a_reset_drops_the_rest() -> None:
    with serving() as served:
        a, b = served.fleet.ids
        served.publish(b, [stored(OTHER, 900)])  # b has a history: a seq back to 0 is a restart
        for pod in (a, b):
            body = {"model": MODEL, "token_ids": PROMPT, "pod": pod.pod, "ttl_s": 30}
            assert served.http.post("/v1/hint", json=body).status_code == 200
        served.publish(a, [stored(PROMPT[: 3 * BS], 1)])  # the engine stores three of four
        assert _by_pod(served.match()) == {a.pod: (3, 1), b.pod: (0, 4)}
        assert len(served.daemon.hints) == 5  # the three confirmed blocks left the side index
        served.restart(b, [stored(OTHER, 900)])  # kvsync resets b, and drops its hints
        poll(lambda: b.pod not in _by_pod(served.match()), what="b's hints to go")
        unknown = {"model": MODEL, "token_ids": PROMPT, "pod": "nobody"}
        assert served.http.post("/v1/hint", json=unknown).status_code == 404
        too_long = {"model": MODEL, "token_ids": PROMPT, "pod": a.pod, "ttl_s": 3600}
        assert served.http.post("/v1/hint", json=too_long).status_code == 422


def test_explain_names_a_removal_with_its_seq_and_a_reset_with_its_reason() -> None:
    with serving() as served:
        a, b = served.fleet.ids
        served.publish(a, [stored(PROMPT, 1)])
        removed_at = served.publish(a, [BlockRemoved(block_hashes=[3])])  # block 2 of 4
        served.publish(b, [stored(PROMPT, 50)])
        served.restart(b, [stored(OTHER, 900)])  # seq 0 again: a restart, b's state dropped
        explained = served.explain()
        assert explained[a]["matched_blocks"] == 2
        assert explained[a]["stopped_at"] == 2
        assert explained[a]["why"]["reason"] == "removed"
        assert explained[a]["why"]["seq"] == removed_at
        assert explained[b]["matched_blocks"] == 0
        assert explained[b]["why"]["reason"] == "reset"
        assert explained[b]["why"]["cause"] == "restart"
        assert explained[b]["state"] in ("live", "reset")
        never = served.explain(OTHER)  # b holds OTHER; a never stored it
        assert never[b]["why"]["reason"] == "query_end"
        assert never[a]["why"]["reason"] == "never_stored"


def test_explain_names_capacity_eviction() -> None:
    with serving(max_prefixes_per_context=8) as served:
        a, _ = served.fleet.ids
        served.publish(a, [stored(PROMPT, 1)])  # 4 keys
        served.publish(a, [stored(OTHER, 100)])  # 9 keys: evicted down to 7, PROMPT's leaves
        explained = served.explain()
        assert explained[a]["matched_blocks"] == 2
        assert explained[a]["why"]["reason"] == "evicted"
        assert explained[a]["why"]["cause"] == "max_keys"


def test_explain_names_an_endpoint_that_is_replaying() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    silent = ctx.socket(zmq.ROUTER)  # a replay socket that never answers
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with Fleet(pods=1, dp_sizes=(1,), seed=2, block_size=BS) as fleet:
            [endpoint] = fleet.endpoints()
            stalled = replace(endpoint, replay=f"tcp://127.0.0.1:{port}")
            config = Settings(
                discovery="static",
                endpoint=(stalled,),
                http_host="127.0.0.1",
                http_port=0,
                log_level="error",
                replay_timeout_seconds=60,
            )
            daemon = Daemon(config)
            daemon.start()
            try:
                assert silent.poll(10_000), "the daemon asked for no replay"
                with httpx.Client(base_url=daemon.url, timeout=10) as http:
                    answer = http.post("/v1/explain", json={"model": MODEL, "token_ids": PROMPT})
                    [only] = answer.json()["endpoints"]
                    assert (only["state"], only["why"]["reason"]) == ("replaying", "replaying")
            finally:
                daemon.stop(2.0)
    finally:
        silent.close()
        ctx.term()
