"""Whole daemons (``kvsync.daemon.runtime.Daemon``: real ZMQ, real uvicorn on 127.0.0.1) in front
of one simulated fleet, and what tests of several replicas ask them over HTTP."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from kvsync.daemon import config, runtime
from kvsync.model import EndpointId
from kvsync.sim import Fleet, SimQuery
from tests.integration.ingest_harness import eventually


@contextmanager
def serving(fleet: Fleet | None, *args: str) -> Iterator[httpx.Client]:
    """A daemon subscribed to ``fleet`` (static discovery, its endpoint specs; None: to nothing,
    a replica that answers from a shared index) with ``args``; yields an HTTP client of its API
    once ``/readyz`` says ok, stops it at the end."""
    specs = [] if fleet is None else fleet.endpoint_specs()
    endpoints = [arg for spec in specs for arg in ("--endpoint", spec)]
    argv = ["--http-host", "127.0.0.1", "--http-port", "0", "--drain-seconds", "0", *endpoints]
    if fleet is None:
        argv += ["--discovery", "static"]
    daemon = runtime.Daemon(config.load([*argv, *args], {}))
    try:
        daemon.start()
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            eventually(lambda: http.get("/readyz").status_code == 200, what="/readyz 200")
            yield http
    finally:
        assert daemon.stop(5.0)


def pods(http: httpx.Client) -> dict[str, Any]:
    response = http.get("/v1/pods")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def last_seqs(http: httpx.Client) -> dict[EndpointId, int | None]:
    """Each subscribed endpoint's last applied seq, as ``/v1/pods`` says (None while replaying)."""
    return {
        EndpointId(row["pod"], row["dp_rank"]): None
        if row["state"] == "replaying"
        else row["last_seq"]
        for row in pods(http)["pods"]
    }


def published(fleet: Fleet, ids: list[EndpointId]) -> dict[EndpointId, int | None]:
    """Each publisher's last seq sent (None before any)."""
    seqs = {}
    for endpoint_id in ids:
        sent = fleet.publisher(endpoint_id).stats.next_seq
        seqs[endpoint_id] = sent - 1 if sent else None
    return seqs


def wait_applied(fleet: Fleet, http: httpx.Client, ids: list[EndpointId]) -> None:
    """Until the daemon behind ``http`` has applied every batch ``fleet`` published to ``ids``."""
    fleet.flush()
    want = published(fleet, ids)
    eventually(lambda: last_seqs(http) == want, what=f"{http.base_url} applied {want}")


_OWN_READINGS = frozenset({"last_event_age_s", "load"})


def matches(http: httpx.Client, query: SimQuery) -> list[dict[str, Any]]:
    """The answer's matches, without ``last_event_age_s`` and ``load`` (a replica's own clock
    reading, and its own scrapes of the engines)."""
    response = http.post("/v1/match", json=query.body())
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()["matches"]
    return [{k: v for k, v in row.items() if k not in _OWN_READINGS} for row in rows]


def matched_blocks(rows: list[dict[str, Any]]) -> dict[EndpointId, int]:
    return {EndpointId(row["pod"], row["dp_rank"]): row["matched_blocks"] for row in rows}
