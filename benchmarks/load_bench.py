"""What scraping every engine's /metrics costs the daemon: CPU with and without, same run.

Two processes on the same (2-core, shared) machine:

* the fleet (``--serve``, started by this script): P pods, each a ZMQ PUB socket that stays
  silent and an HTTP server (uvloop, keep-alive) answering ``GET /metrics`` with a vLLM-shaped
  body: the simulator's families for one engine (kvsync's five figures, vLLM's per-request
  histograms with their real buckets) plus vLLM's other histograms, the HTTP instrumentator's
  and prometheus-client's process and GC metrics, about the size of a real one. With ``busy``
  bodies (the default) the five figures change on every answer, so no scrape can reuse the
  previous parse; ``idle`` serves the same body each time.
* the daemon: ``kvsync serve`` with the P pods as static endpoints (``engine_port`` per pod),
  ``--load-interval-seconds`` 0 (the baseline: no scraping) or the interval under test.

The runs alternate baseline and scraping daemons (``--repeats`` of each); each run waits until
every pod was scraped once (or, for the baseline, for the same warm-up), then reads the daemon's
user + system CPU time (Linux /proc) over ``--seconds``. Reported: CPU % of one core per run,
the medians, the difference (what scraping adds), scrapes per second and CPU per scrape.
Prints one JSON document.

    .venv/bin/python benchmarks/load_bench.py [--quick] [--pods 200] [--interval 1.0]
        [--seconds 20] [--repeats 3] [--bodies busy|idle]

``--quick``: 10 s windows, 2 repeats (what ``BENCHMARKS.md`` records unless it says otherwise).
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any, cast

import uvloop
import zmq
from prometheus_client import (
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from kvsync.sim.engine import Engine
from kvsync.sim.engine_metrics import LABELS, EngineMetrics
from kvsync.sim.records import Request

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Sentinels in the rendered body, replaced per answer in busy mode.
_FIGURES = {
    b"vllm:num_requests_running": 7001,
    b"vllm:num_requests_waiting": 7002,
    b"vllm:prefix_cache_queries_total": 7003,
    b"vllm:prefix_cache_hits_total": 7004,
}


def _body_template() -> bytes:
    """One engine's /metrics as vLLM >= 0.11 renders it, with sentinel figures."""
    engine = Engine(num_blocks=4096)
    metrics = EngineMetrics(model=MODEL, engines={0: engine})
    rng = random.Random(7)  # a benchmark's workload
    for _ in range(64):  # fill the histograms' buckets: every bucket line is in the body
        prompt = tuple(rng.randrange(32000) for _ in range(rng.randrange(16, 4000)))
        engine.run(Request(prompt, (1, 2, 3)))
        metrics.observe(0, prompt_tokens=len(prompt), output_tokens=rng.randrange(1, 2000))
    registry = metrics.registry
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    buckets = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
    for name in ("time_per_output_token_seconds", "inter_token_latency_seconds",
                 "request_params_n", "request_max_num_generation_tokens"):  # fmt: skip
        family = Histogram(f"vllm:{name}", name, LABELS, buckets=buckets, registry=registry)
        for _ in range(32):
            family.labels(MODEL, "0").observe(rng.random() * 10)
    http = Histogram("http_request_duration_seconds", "Latency by handler", ["handler", "method"],
                     registry=registry)  # fmt: skip
    for handler in ("/v1/completions", "/v1/chat/completions", "/metrics", "/health", "/tokenize"):
        http.labels(handler, "POST").observe(0.1)
    body = metrics.render()
    for figure, sentinel in _FIGURES.items():
        start = body.index(b"\n" + figure) + 1
        end = body.index(b"\n", start)
        line = body[start:end]
        body = body[:start] + line.rsplit(b" ", 1)[0] + f" {sentinel}.0".encode() + body[end:]
    return body


class _MetricsProtocol(asyncio.Protocol):
    def __init__(self, answer: "_Answers") -> None:
        self._answer = answer
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            _, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            body = self._answer.next()
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"
                    b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")  # fmt: skip
            assert self._transport is not None
            self._transport.write(head + body)


class _Answers:
    """One pod's bodies: the template, its figures moving on every answer when busy."""

    def __init__(self, template: bytes, *, busy: bool) -> None:
        self._template = template
        self._busy = busy
        self._queries = 0
        self._hits = 0

    def next(self) -> bytes:
        if not self._busy:
            return self._template
        self._queries += random.randrange(100, 8000)
        self._hits += random.randrange(0, 100)
        body = self._template
        for sentinel, value in zip(
            _FIGURES.values(),
            (random.randrange(64), random.randrange(16), self._queries, self._hits),
            strict=True,
        ):
            body = body.replace(f" {sentinel}.0".encode(), f" {value}.0".encode(), 1)
        return body


def serve(pods: int, busy: bool) -> None:
    """The fleet process: prints {"http": [...], "pub": [...]} then serves until stdin closes."""
    template = _body_template()
    context = zmq.Context()
    pubs = []
    for _ in range(pods):
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pubs.append((pub, pub.bind_to_random_port("tcp://127.0.0.1")))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for _ in range(pods):
            answers = _Answers(template, busy=busy)
            server = await loop.create_server(
                lambda a=answers: _MetricsProtocol(a),  # type: ignore[misc]
                "127.0.0.1",
                0,
            )
            ports.append(server.sockets[0].getsockname()[1])
        print(json.dumps({"http": ports, "pub": [port for _, port in pubs],
                          "body_bytes": len(template)}), flush=True)  # fmt: skip
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin

    uvloop.run(main())
    for pub, _ in pubs:
        pub.close()
    context.term()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  # loopback only
        return cast("bytes", response.read())


def _scrapes(port: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in _get(f"http://127.0.0.1:{port}/metrics").decode().splitlines():
        if line.startswith("kvsync_load_scrapes_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            found[result] = float(line.rsplit(" ", 1)[1])
    return found


def _run(fleet: dict[str, Any], interval: float, seconds: float) -> dict[str, float]:
    """One daemon: its CPU % of one core over ``seconds`` once warm, and its scrapes."""
    http_port = _free_port()
    endpoints = [
        f"--endpoint=name=bench-{i},model={MODEL},pub=tcp://127.0.0.1:{pub},engine_port={engine}"
        for i, (pub, engine) in enumerate(zip(fleet["pub"], fleet["http"], strict=True))
    ]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "kvsync", "serve", "--http-host", "127.0.0.1",
         "--http-port", str(http_port), "--log-level", "error", "--drain-seconds", "0",
         "--load-interval-seconds", str(interval), *endpoints],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "daemon not ready"
            try:
                _get(f"http://127.0.0.1:{http_port}/readyz")
                break
            except OSError:
                time.sleep(0.2)
        pods = len(fleet["http"])
        while interval and sum(_scrapes(http_port).values()) < 2 * pods:
            assert time.monotonic() < deadline, "not every pod scraped"
            time.sleep(0.2)
        time.sleep(3.0)  # warm-up: connections open, the first rounds behind
        scrapes_before = _scrapes(http_port)
        cpu_before, started = _cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        cpu_after, took = _cpu_seconds(daemon.pid), time.monotonic() - started
        scrapes_after = _scrapes(http_port)
    finally:
        daemon.terminate()
        daemon.wait(30)
    done = {k: scrapes_after.get(k, 0) - scrapes_before.get(k, 0) for k in scrapes_after}
    return {
        "cpu_percent": round(100 * (cpu_after - cpu_before) / took, 3),
        "scrapes_per_s": round(sum(done.values()) / took, 1),
        "failed_per_s": round(sum(v for k, v in done.items() if k != "ok") / took, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bodies", choices=("busy", "idle"), default="busy")
    args = parser.parse_args()
    if args.serve:
        serve(args.pods, args.bodies == "busy")
        return
    if args.quick:
        args.seconds, args.repeats = 10.0, 2
    fleet_process = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--pods", str(args.pods), "--bodies", args.bodies],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert fleet_process.stdout is not None
        fleet = json.loads(fleet_process.stdout.readline())
        runs: dict[str, list[dict[str, float]]] = {"baseline": [], "scraping": []}
        for _ in range(args.repeats):
            runs["baseline"].append(_run(fleet, 0.0, args.seconds))
            runs["scraping"].append(_run(fleet, args.interval, args.seconds))
    finally:
        assert fleet_process.stdin is not None
        fleet_process.stdin.close()
        fleet_process.wait(30)
    off = statistics.median(r["cpu_percent"] for r in runs["baseline"])
    on = statistics.median(r["cpu_percent"] for r in runs["scraping"])
    scrapes = statistics.median(r["scrapes_per_s"] for r in runs["scraping"])
    added = round(on - off, 3)
    print(json.dumps({
        "benchmark": "load",
        "pods": args.pods,
        "interval_s": args.interval,
        "bodies": args.bodies,
        "body_bytes": fleet["body_bytes"],
        "seconds": args.seconds,
        "repeats": args.repeats,
        "runs": runs,
        "baseline_cpu_percent_median": off,
        "scraping_cpu_percent_median": on,
        "added_cpu_percent_of_one_core": added,
        "scrapes_per_s_median": scrapes,
        "cpu_us_per_scrape": round(added / 100 * 1e6 / scrapes, 1) if scrapes else None,
        "target_percent": 2.0,
        "within_target": added < 2.0,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
