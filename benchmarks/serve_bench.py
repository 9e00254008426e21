"""End to end, as a router sees it: kvsync against NVIDIA Dynamo's standalone KV indexer.

Each system runs alone (one at a time, fresh) against the same byte-identical publisher streams:
16 simulated vLLM 0.33 engines (``serve_workload.py``: map-era frames, uint64 hashes, no replay
endpoint) published from a child process over ZMQ on 127.0.0.1. kvsync is ``kvsync serve`` with
static endpoints; Dynamo is ``python -m dynamo.indexer`` from its own venv
(``scripts/dynamo-indexer.sh``), each publisher registered with ``POST /register``. Per system:

* sustained ingest: the bulk segment (realistic engine traffic, stored + removed blocks) sent as
  fast as the publishers can, until a marker block stored last on every endpoint is queryable on
  all 16 (so it counts what a router can see, not what a counter says); CPU seconds of the
  daemon's process per million blocks over the same interval (``/proc/<pid>/stat``, all threads);
* answer agreement: 272 queries (sampled from the engines' recent traffic, plus the 2k and 8k
  document prompts) against the engines' ground truth, after the bulk and again after the churn;
* lookup latency: one keep-alive HTTP/1.1 connection, open-loop pacing (each request sent at its
  scheduled time, or at once when the previous answer came late), 2,048- and 8,192-token prompts
  (each held by 4 endpoints) at 200 and 500 rps, first without ingest, then with 100k blocks/s of
  churn from the 16 publishers. Latency from each send; ``from_schedule`` also counts waiting;
* publish -> queryable lag: a fresh one-block prefix sent on one endpoint, then queried back to
  back until that endpoint holds it (resolution: one query round trip), idle and under the churn;
* RSS of the daemon after the bulk and at the end.

``--repeats N`` alternates the systems N times; every figure is the median over the rounds, and
``kvsync_over_dynamo`` divides kvsync's median by Dynamo's (below 1: kvsync is lower, which for
latency, lag, CPU and memory is better; for ingest higher is better). Prints one JSON document.

    .venv/bin/python benchmarks/serve_bench.py [--quick] [--repeats 3] [--seconds 5]
        [--systems kvsync,dynamo] [--dynamo-python PATH]
"""

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import serve_workload as wl
import zmq

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KVSYNC_TEST_CACHE", Path.home() / ".cache" / "kvsync-test"))
CHURN_BLOCKS_PER_S = 100_000
SIZES = (2048, 8192)
RATES = (200, 500)
MARKER_SETUP, MARKER_BULK, MARKER_CHURN = 1, 2, 3


# --- the publishers (child process) ---------------------------------------------------------------


def publish(conn: Connection, stream_file: str, ports: list[int]) -> None:
    """Bind one XPUB per endpoint, then run the parent's commands until ``stop``."""
    streams = msgspec.msgpack.decode(Path(stream_file).read_bytes(), type=wl.Built).streams
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = []
    for port in ports:
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, 0)  # never drop: a slow daemon shows as time, not as loss
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"tcp://127.0.0.1:{port}")
        socks.append(sock)
    seqs = [0] * len(socks)

    def send(endpoint: int, payload: bytes) -> None:
        socks[endpoint].send_multipart([b"", seqs[endpoint].to_bytes(8, "big"), payload])
        seqs[endpoint] += 1

    def marker(number: int) -> None:
        payload = wl.one_block(wl.foreign_tokens(1, number), wl.foreign_hash(1, number))
        for endpoint in range(len(socks)):
            send(endpoint, payload)

    rate, churned, position, due = 0.0, 0, 0, 0.0
    conn.send("bound")
    while True:
        if rate:
            now = time.monotonic()
            while due <= now:  # catch up after a late wake-up: the rate is kept on average
                endpoint, step = position % len(socks), position // len(socks)
                stream = streams[endpoint]
                if step < wl.RING:
                    payload, blocks = stream.churn_first[step], stream.churn_blocks_first[step]
                else:
                    payload = stream.churn_cycle[step % wl.RING]
                    blocks = stream.churn_blocks_cycle[step % wl.RING]
                send(endpoint, payload)
                churned += blocks
                position += 1
                due += blocks / rate
        if not conn.poll(0.0003 if rate else None):
            continue
        command = conn.recv()
        if command[0] == "subscribers":  # XPUB sees b"\x01" when a subscriber joins
            for sock in socks:
                if not sock.poll(60_000):
                    raise TimeoutError("no subscriber")
                sock.recv()
            conn.send("subscribed")
        elif command[0] == "segment":
            _, name, number = command
            started = time.monotonic()
            segments = [getattr(stream, name) for stream in streams]
            for step in range(max(len(s) for s in segments)):
                for endpoint, segment in enumerate(segments):
                    if step < len(segment):
                        send(endpoint, segment[step])
            marker(number)
            conn.send((started, time.monotonic()))
        elif command[0] == "marker":
            marker(command[1])
            conn.send("sent")
        elif command[0] == "churn":
            rate, due = float(command[1]), time.monotonic()
            conn.send((time.monotonic(), churned))
        elif command[0] == "probe":
            _, endpoint, number = command
            payload = wl.one_block(wl.foreign_tokens(2, number), wl.foreign_hash(2, number))
            sent = time.monotonic()
            send(endpoint, payload)
            conn.send(sent)
        else:
            break
    for sock in socks:
        sock.close(linger=0)
    ctx.term()


# --- HTTP: one keep-alive connection -------------------------------------------------------------


class Client:
    """HTTP/1.1 over one persistent TCP connection, blocking; bodies with Content-Length only."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @staticmethod
    def request(method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body

    def send(self, raw: bytes) -> tuple[int, bytes]:
        self._sock.sendall(raw)
        buffer = b""
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv()
        length = 0
        for line in buffer[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(buffer) < end + 4 + length:
            buffer += self._recv()
        return int(buffer[9:12]), buffer[end + 4 : end + 4 + length]

    def _recv(self) -> bytes:
        chunk = self._sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self._sock.close()


# --- the two systems ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_http(port: int, path: str, deadline_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the daemon exited during start-up"
        try:
            client = Client(port)
            status, _ = client.send(Client.request("GET", path))
            client.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no 200 from {path}")


class System:
    """A daemon under test: how to start it and how a router asks it."""

    name = ""

    def __init__(self, ports: list[int], log: Path) -> None:
        self.ports = ports
        self.http_port = _free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def query(self, tokens: list[int]) -> bytes:
        raise NotImplementedError

    def answer(self, body: bytes) -> dict[str, int]:
        """pod -> matched blocks (only pods with a match)."""
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Kvsync(System):
    name = "kvsync"

    def start(self) -> subprocess.Popen[bytes]:
        endpoints = [
            f"--endpoint=name={wl.pod_name(e)},model={wl.MODEL},pub=tcp://127.0.0.1:{port}"
            for e, port in enumerate(self.ports)
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kvsync", "serve", "--http-host", "127.0.0.1",
                 "--http-port", str(self.http_port), "--log-level", "warning",
                 "--drain-seconds", "0", *endpoints],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_http(self.http_port, "/readyz", 60, self.process)
        return self.process

    def query(self, tokens: list[int]) -> bytes:
        body = msgspec.json.encode({"model": wl.MODEL, "token_ids": tokens})
        return Client.request("POST", "/v1/match", body)

    def answer(self, body: bytes) -> dict[str, int]:
        matches = msgspec.json.decode(body)["matches"]
        return {m["pod"]: m["matched_blocks"] for m in matches if m["matched_blocks"]}


class Dynamo(System):
    name = "dynamo"
    python = ""

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "dynamo.indexer", "--port", str(self.http_port),
                 "--block-size", str(wl.BS)],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "DYN_LOG": "warn"},
            )  # fmt: skip
        _wait_http(self.http_port, "/health", 60, self.process)
        client = Client(self.http_port)
        for e, port in enumerate(self.ports):
            body = msgspec.json.encode({
                "instance_id": e + 1, "endpoint": f"tcp://127.0.0.1:{port}",
                "model_name": wl.MODEL, "block_size": wl.BS,
            })  # fmt: skip
            status, text = client.send(Client.request("POST", "/register", body))
            assert status == 201, f"register: {status} {text!r}"
        client.close()
        return self.process

    def query(self, tokens: list[int]) -> bytes:
        body = msgspec.json.encode({"model_name": wl.MODEL, "token_ids": tokens})
        return Client.request("POST", "/query", body)

    def answer(self, body: bytes) -> dict[str, int]:
        scores: dict[str, dict[str, int]] = msgspec.json.decode(body)["scores"]
        return {
            wl.pod_name(int(instance) - 1): tokens // wl.BS
            for instance, ranks in scores.items()
            for tokens in ranks.values()
            if tokens >= wl.BS
        }


# --- measurements --------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, every thread (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_marker(system: System, client: Client, number: int, deadline_s: float) -> float:
    """Poll (every 5 ms) until all 16 endpoints hold marker ``number``; returns when seen."""
    raw = system.query(wl.foreign_tokens(1, number))
    deadline = time.monotonic() + deadline_s
    while True:
        status, body = client.send(raw)
        now = time.monotonic()
        if status == 200 and len(system.answer(body)) == wl.ENDPOINTS:
            return now
        assert now < deadline, f"marker {number} not queryable on every endpoint"
        time.sleep(0.005)


def agreement(system: System, client: Client, built: wl.Built) -> dict[str, Any]:
    """Exact answers (every endpoint's matched blocks) against the engines' ground truth."""
    exact = over = under = 0
    for tokens, truth in zip(built.queries, built.truth, strict=True):
        status, body = client.send(system.query(tokens))
        assert status == 200, status
        got = system.answer(body)
        exact += got == truth
        pods = set(got) | set(truth)
        over += sum(got.get(p, 0) > truth.get(p, 0) for p in pods)
        under += sum(got.get(p, 0) < truth.get(p, 0) for p in pods)
    return {
        "exact": round(exact / len(built.queries), 4),
        "over_reported_endpoints": over,
        "under_reported_endpoints": under,
    }


def paced(client: Client, requests: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Open loop on one connection: request i is due at start + i / rate."""
    latencies, from_schedule, bad = [], [], 0
    start = time.perf_counter()
    count = int(rate * seconds)
    for i in range(count):
        due = start + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent = time.perf_counter()
        status, _ = client.send(requests[i % len(requests)])
        done = time.perf_counter()
        bad += status != 200
        latencies.append(done - sent)
        from_schedule.append(done - due)
    elapsed = time.perf_counter() - start
    return {
        "achieved_rps": round(count / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "p99_ms": round(1000 * _pct(latencies, 0.99), 3),
        "p99_from_schedule_ms": round(1000 * _pct(from_schedule, 0.99), 3),
        "errors": bad,
    }


PROBE_DEADLINE_S = 30.0
LAG_PHASE_BUDGET_S = 120.0


def lags(
    system: System, client: Client, conn: Connection, first: int, count: int
) -> tuple[list[float], int]:
    """Probe ``first``..: publish a fresh block on one endpoint, query until it is held there.

    Returns the lags and how many probes were not queryable within ``PROBE_DEADLINE_S`` (counted
    at the deadline). A daemon whose ingest falls behind the churn makes every later probe wait
    behind a growing backlog, so the phase also stops after ``LAG_PHASE_BUDGET_S``: a result to
    report (BENCHMARKS.md ## Serving), not a hang.
    """
    result, late = [], 0
    phase_end = time.monotonic() + LAG_PHASE_BUDGET_S
    for number in range(first, first + count):
        endpoint = number % wl.ENDPOINTS
        raw = system.query(wl.foreign_tokens(2, number))
        pod = wl.pod_name(endpoint)
        conn.send(("probe", endpoint, number))
        sent: float = conn.recv()
        while True:
            status, body = client.send(raw)
            seen = time.monotonic()
            if status == 200 and pod in system.answer(body):
                break
            if seen - sent > PROBE_DEADLINE_S:
                late += 1
                break
        result.append(seen - sent)
        if time.monotonic() > phase_end:
            break
        time.sleep(0.005 + 0.005 * (number % 3))  # spread the probes over the batch cadence
    return result, late


def run_system(
    system: System, built_file: str, built: wl.Built, seconds: float, probes: int
) -> dict[str, Any]:
    spawn = multiprocessing.get_context("spawn")
    parent, child = spawn.Pipe()
    publisher = spawn.Process(target=publish, args=(child, built_file, system.ports))
    publisher.start()
    out: dict[str, Any] = {}
    try:
        assert parent.recv() == "bound"
        process = system.start()
        pid = process.pid
        parent.send(("subscribers",))
        assert parent.recv() == "subscribed"
        client = Client(system.http_port)
        parent.send(("segment", "setup", MARKER_SETUP))
        parent.recv()
        wait_marker(system, client, MARKER_SETUP, 120)

        cpu0 = cpu_seconds(pid)
        parent.send(("segment", "bulk", MARKER_BULK))
        started, _ = parent.recv()
        seen = wait_marker(system, client, MARKER_BULK, 600)
        cpu = cpu_seconds(pid) - cpu0
        blocks = sum(s.bulk_blocks for s in built.streams) + wl.ENDPOINTS
        out["ingest_blocks"] = blocks
        out["ingest_blocks_per_s"] = round(blocks / (seen - started))
        out["ingest_cpu_s_per_million_blocks"] = round(cpu / blocks * 1e6, 3)
        out["rss_mb_after_bulk"] = rss_mb(pid)
        out["agreement_after_bulk"] = agreement(system, client, built)

        idle_lags, out["lag_idle_late"] = lags(system, client, parent, 0, probes)
        out["lag_idle_p50_ms"] = round(1000 * statistics.median(idle_lags), 3)
        out["lag_idle_p99_ms"] = round(1000 * _pct(idle_lags, 0.99), 3)

        requests = {n: [system.query(p) for p in built.doc_queries[n]] for n in SIZES}
        paced(client, requests[SIZES[0]], 200, 1.0)  # warm-up
        churn_t0, churn_b0 = 0.0, 0
        for ingest in (False, True):
            label = "ingest" if ingest else "idle"
            if ingest:
                parent.send(("churn", CHURN_BLOCKS_PER_S))
                churn_t0, churn_b0 = parent.recv()
                time.sleep(1.0)  # let the daemon settle at the rate before measuring
            for n in SIZES:
                for rate in RATES:
                    result = paced(client, requests[n], rate, seconds)
                    for key, value in result.items():
                        out[f"lookup_{n}_{rate}rps_{label}_{key}"] = value
            if ingest:
                churn_lags, out["lag_ingest_late"] = lags(system, client, parent, probes, probes)
                out["lag_ingest_probes"] = len(churn_lags)
                out["lag_ingest_p50_ms"] = round(1000 * statistics.median(churn_lags), 3)
                out["lag_ingest_p99_ms"] = round(1000 * _pct(churn_lags, 0.99), 3)
                parent.send(("churn", 0))
                churn_t1, churn_b1 = parent.recv()
                out["churn_sent_blocks_per_s"] = round(
                    (churn_b1 - churn_b0) / (churn_t1 - churn_t0)
                )
                parent.send(("marker", MARKER_CHURN))
                parent.recv()
                marked = time.monotonic()
                out["churn_backlog_drain_s"] = round(
                    wait_marker(system, client, MARKER_CHURN, 600) - marked, 3
                )
        out["agreement_after_churn"] = agreement(system, client, built)
        out["rss_mb_end"] = rss_mb(pid)
        client.close()
    finally:
        system.stop()
        if publisher.is_alive():
            parent.send(("stop",))
        publisher.join(10)
    return out


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            merged[key] = _median_of([r[key] for r in runs])
        else:
            merged[key] = statistics.median(r[key] for r in runs)
            if isinstance(value, float):
                merged[key] = round(merged[key], 4)
    return merged


def _ratios(kvsync: dict[str, Any], dynamo: dict[str, Any]) -> dict[str, float]:
    return {
        key: round(value / dynamo[key], 3)
        for key, value in kvsync.items()
        if isinstance(value, int | float) and dynamo.get(key) and "errors" not in key
    }


def _dynamo_python(given: str | None) -> str:
    if given:
        return given
    found = subprocess.run(
        ["/bin/bash", str(REPO / "scripts" / "dynamo-indexer.sh")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return found.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200k bulk blocks, 2 s phases")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; figures are medians")
    parser.add_argument("--seconds", type=float, default=5.0, help="per latency phase")
    parser.add_argument("--bulk-blocks", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=200, help="lag probes, idle and ingest")
    parser.add_argument("--systems", default="kvsync,dynamo")
    parser.add_argument("--dynamo-python", help="the venv python with ai-dynamo-runtime")
    args = parser.parse_args()
    if args.quick:
        args.bulk_blocks, args.seconds, args.probes = 200_000, 2.0, 60
    names = args.systems.split(",")
    if "dynamo" in names:
        Dynamo.python = _dynamo_python(args.dynamo_python)
    built = wl.load_or_build(args.bulk_blocks, CACHE)
    factories: dict[str, Callable[[list[int], Path], System]] = {
        "kvsync": Kvsync, "dynamo": Dynamo,
    }  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as scratch:
        built_file = str(Path(scratch) / "streams.msgpack")
        Path(built_file).write_bytes(msgspec.msgpack.encode(built))
        for _ in range(args.repeats):
            for name in names:
                ports = [_free_port() for _ in range(wl.ENDPOINTS)]
                system = factories[name](ports, Path(scratch) / f"{name}.log")
                try:
                    runs[name].append(
                        run_system(system, built_file, built, args.seconds, args.probes)
                    )
                except Exception:
                    print(system.log.read_text(errors="replace")[-4000:], file=sys.stderr)
                    raise
    medians = {name: _median_of(r) for name, r in runs.items()}
    report: dict[str, Any] = {
        "benchmark": "serve",
        "endpoints": wl.ENDPOINTS,
        "era": wl.ERA.value,
        "bulk_blocks": args.bulk_blocks,
        "seconds_per_phase": args.seconds,
        "probes": args.probes,
        "churn_blocks_per_s": CHURN_BLOCKS_PER_S,
        "repeats": args.repeats,
        "queries": len(built.queries),
        **medians,
    }
    if "kvsync" in medians and "dynamo" in medians:
        report["kvsync_over_dynamo"] = _ratios(medians["kvsync"], medians["dynamo"])
    if args.repeats > 1:
        report["runs"] = runs
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
