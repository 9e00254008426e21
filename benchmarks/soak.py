"""Soak: ``kvsync serve`` under steady ingest, pod churn and lookups for a long time.

Not in CI (``make bench`` does not run it either: 30 minutes). Processes on the same machine:

* the daemon: ``kvsync serve`` with ``--endpoints-file`` (static discovery, as deployed), its
  logs in a temp file;
* ``--workers`` fleet processes (``soak_fleet.py``): simulated vLLM pods replaying recorded engine
  traffic through the simulator's publishers at ``--blocks-per-s`` blocks per second in total
  (stored + removed, as ``ingest_bench`` and the README's lag figure count them), with churn on
  command: gaps (replayable), AllBlocksCleared, engine restarts, and pods replaced (removed, and
  a new pod with a new name and new ports added: the endpoints file is rewritten and the daemon
  gets SIGHUP);
* this process: one churn operation every ``--churn-interval-s``, the daemon's RSS
  (/proc/<pid>/status VmRSS) every ``--rss-interval-s``, its counters (``GET /metrics``) at
  every window, and a load thread sending ``--rps`` open-loop ``POST /v1/match`` requests over 8
  keep-alive connections (router questions sampled from the fleet's traffic). Latency is from
  each send; ``p99_from_schedule_ms`` also charges the wait for a free connection.

Reported per ``--window-s`` window: lookup p50/p99, achieved rps, blocks sent and applied per
second, the daemon's CPU and RSS, gaps/replays/resets and the churn applied. Over the run: RSS
max/min after ``--warmup-s`` (the daemon should not grow once its index is full). At the end,
churn and traffic stop, every endpoint is fast-forwarded to a state whose ground truth is known,
and once the daemon has applied every last seq, sampled queries are checked against it
(precision and recall of matched blocks over (query, endpoint) pairs, as the integration tests
score). Prints one JSON document.

    .venv/bin/python benchmarks/soak.py [--duration-s 1800] [--warmup-s 300] [--window-s 300]
        [--blocks-per-s 100000] [--rps 200] [--pods 8] [--workers 2]
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import soak_fleet
from api_bench import http_request, response_length

import kvsync

CONNECTIONS = 8
CHURN_OPS = ("gap", "clear", "restart", "replace")
CHURN_WEIGHTS = (4, 2, 2, 2)


# --- HTTP --------------------------------------------------------------------------------------
def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def _metrics(port: int) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value} (samples only)."""
    found = {}
    for line in _get(port, "/metrics").decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def _by_label(metrics: dict[str, float], name: str) -> dict[str, int]:
    """{label value: count} of a counter with one label (the _total samples)."""
    result = {}
    for key, value in metrics.items():
        if key.startswith(name + "{") and value:
            result[key.split('"')[1]] = int(value)
    return result


@dataclass
class Lookups:
    """Open-loop ``POST /v1/match`` at a fixed rate from a thread, until ``stop``."""

    port: int
    requests: list[bytes]
    rate: float
    stop: threading.Event = field(default_factory=threading.Event)
    # (finished at (monotonic), latency from send, latency from the scheduled time, status)
    samples: list[tuple[float, float, float, int]] = field(default_factory=list)
    failure: BaseException | None = None
    reconnects: int = 0  # keep-alive connections the server closed, reopened

    def _connect(self) -> socket.socket:
        conn = socket.create_connection(("127.0.0.1", self.port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _send(self, conn: socket.socket, request: bytes) -> socket.socket:
        """Send on ``conn``, or on a new connection if the server has closed that one."""
        try:
            conn.sendall(request)
        except OSError:
            conn.close()
            conn = self._connect()
            conn.sendall(request)
            self.reconnects += 1
        return conn

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001  # reported in the result
            self.failure = exc

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        # First in, first out: every connection is used every few tens of ms, so none idles
        # into the server's keep-alive timeout (uvicorn: 5 s) and gets closed under us.
        free: deque[socket.socket] = deque(self._connect() for _ in range(CONNECTIONS))
        busy: dict[socket.socket, tuple[float, float, bytes]] = {}  # due, sent, buffer
        pending: dict[socket.socket, bytes] = {}  # the request in flight on each
        start = time.monotonic()
        sent = 0
        due = start
        while not self.stop.is_set() or busy:
            now = time.monotonic()
            while free and due <= now and not self.stop.is_set():
                request = self.requests[sent % len(self.requests)]
                conn = self._send(free.popleft(), request)
                busy[conn] = (due, time.monotonic(), b"")
                pending[conn] = request
                selector.register(conn, selectors.EVENT_READ)
                sent += 1
                due = max(start + sent / self.rate, now - 1.0)  # a stall is not made up later
            wait = 0.1 if not free else min(0.1, max(0.0, due - time.monotonic()))
            for key, _ in selector.select(wait):
                conn = cast(socket.socket, key.fileobj)
                scheduled, sent_at, buffer = busy[conn]
                chunk = conn.recv(1 << 20)
                if not chunk:
                    if buffer:
                        raise ConnectionError("the daemon closed a connection mid-response")
                    # A keep-alive connection the server closed: what an HTTP client does, open
                    # another and send again; the latency keeps the first send's time.
                    selector.unregister(conn)
                    conn.close()
                    del busy[conn]
                    request = pending.pop(conn)
                    conn = self._send(self._connect(), request)
                    busy[conn], pending[conn] = (scheduled, sent_at, b""), request
                    selector.register(conn, selectors.EVENT_READ)
                    self.reconnects += 1
                    continue
                buffer += chunk
                if not response_length(buffer):
                    busy[conn] = (scheduled, sent_at, buffer)
                    continue
                finished = time.monotonic()
                status = int(buffer[9:12])
                self.samples.append((finished, finished - sent_at, finished - scheduled, status))
                del busy[conn], pending[conn]
                selector.unregister(conn)
                free.append(conn)
        for conn in free:
            conn.close()


def _percentile(values: list[float], share: float) -> float:
    return values[min(len(values) - 1, int(share * (len(values) - 1)))]


def _latency(samples: list[tuple[float, float, float, int]], seconds: float) -> dict[str, Any]:
    if not samples:
        return {"lookups": 0}
    latencies = sorted(s[1] for s in samples)
    queued = sorted(s[2] for s in samples)
    return {
        "lookups": len(samples),
        "achieved_rps": round(len(samples) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "p99_ms": round(1000 * _percentile(latencies, 0.99), 3),
        "max_ms": round(1000 * latencies[-1], 3),
        "p99_from_schedule_ms": round(1000 * _percentile(queued, 0.99), 3),
        "statuses": dict(Counter(str(s[3]) for s in samples)),
    }


# --- processes ---------------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Workers:
    """The fleet processes: one Pipe each, every command answered (in order)."""

    def __init__(self, configs: list[soak_fleet.FleetConfig]) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes = []
        for config in configs:
            ours, theirs = spawn.Pipe()
            process = spawn.Process(target=soak_fleet.worker, args=(theirs, config))
            process.start()
            self.conns.append(ours)
            self.processes.append(process)

    def call(self, worker: int, *command: Any) -> Any:
        self.conns[worker].send(command)
        return self.conns[worker].recv()

    def call_all(self, *command: Any) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        return [conn.recv() for conn in self.conns]

    def close(self) -> None:
        for conn, process in zip(self.conns, self.processes, strict=True):
            if process.is_alive():
                try:
                    conn.send(("stop",))
                    conn.recv()
                except (OSError, EOFError):
                    pass
            process.join(30)
            if process.is_alive():
                process.kill()


def _write_endpoints(path: Path, documents: list[list[dict[str, Any]]]) -> None:
    """Atomically (the daemon may re-read at any time: never half a file)."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps([e for document in documents for e in document]))
    scratch.replace(path)


def _pods(port: int) -> dict[str, dict[str, Any]]:
    pods = json.loads(_get(port, "/v1/pods"))["pods"]
    return {f"{p['pod']}#{p['dp_rank']}": p for p in pods}


def _wait(check: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


# --- the run -----------------------------------------------------------------------------------
@dataclass
class Counters:
    """The daemon's cumulative counters at one moment (from /metrics)."""

    at: float
    stored: float
    removed: float
    gaps: float
    replays: dict[str, int]
    resets: dict[str, int]
    cpu_s: float

    @classmethod
    def read(cls, port: int, pid: int) -> "Counters":
        metrics = _metrics(port)
        return cls(
            at=time.monotonic(),
            stored=metrics.get('kvsync_blocks_applied_total{type="stored"}', 0.0),
            removed=metrics.get('kvsync_blocks_applied_total{type="removed"}', 0.0),
            gaps=metrics.get("kvsync_sequence_gaps_total", 0.0),
            replays=_by_label(metrics, "kvsync_replays_total"),
            resets=_by_label(metrics, "kvsync_endpoint_resets_total"),
            cpu_s=_cpu_s(pid),
        )


def _delta(new: dict[str, int], old: dict[str, int]) -> dict[str, int]:
    return {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0)}


def _final_check(
    workers: Workers, port: int, queries_per_worker: int, timeout: float
) -> dict[str, Any]:
    """Quiesce, wait for every last seq, then score sampled queries against the ground truth."""
    last: dict[str, int] = {}
    for part in workers.call_all("quiesce", 60.0):
        last.update(part)

    def applied() -> bool:
        pods = _pods(port)
        return pods.keys() == last.keys() and all(
            pods[e]["last_seq"] == seq and pods[e]["state"] != "replaying"
            for e, seq in last.items()
        )

    settle_s = _wait(applied, timeout, "the daemon applied every endpoint's last seq")
    states = Counter(p["state"] for p in _pods(port).values())
    queries = [q for part in workers.call_all("queries", queries_per_worker) for q in part]
    truths: list[dict[str, int]] = [{} for _ in queries]
    for part in workers.call_all("truth", queries):
        for truth, held in zip(truths, part, strict=True):
            truth.update(held)
    claimed = true = agreed = hits = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for query, truth in zip(queries, truths, strict=True):
            conn.request(
                "POST", "/v1/match", json.dumps(query.body()), {"Content-Type": "application/json"}
            )
            matches = json.loads(conn.getresponse().read())["matches"]
            answer = {f"{m['pod']}#{m['dp_rank']}": m["matched_blocks"] for m in matches}
            hits += len(truth)
            for endpoint in truth.keys() | answer.keys():
                got, want = answer.get(endpoint, 0), truth.get(endpoint, 0)
                claimed, true, agreed = claimed + got, true + want, agreed + min(got, want)
    finally:
        conn.close()
    return {
        "settle_s": settle_s,
        "endpoints": len(last),
        "states": dict(states),
        "queries": len(queries),
        "true_hits": hits,
        "matched_blocks_true": true,
        "matched_blocks_answered": claimed,
        "precision": round(agreed / claimed, 6) if claimed else 1.0,
        "recall": round(agreed / true, 6) if true else 1.0,
    }


def _log_summary(path: Path) -> dict[str, Any]:
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            levels["unparsed"] += 1
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level in ("warning", "error", "critical"):
            events[f"{level}:{entry.get('event')}"] += 1
    return {"lines_by_level": dict(levels), "warnings_and_errors": dict(events.most_common(20))}


def fleet_configs(args: argparse.Namespace) -> list[soak_fleet.FleetConfig]:
    """The fleet processes' shares of ``--pods`` and ``--blocks-per-s`` (dp sizes 1, 2, 1, ...)."""
    return [
        soak_fleet.FleetConfig(
            worker=w,
            pods=args.pods // args.workers + (1 if w < args.pods % args.workers else 0),
            dp_sizes=(1, 2),
            blocks_per_s=args.blocks_per_s / args.workers,
            cycle_blocks=args.cycle_blocks,
            num_blocks=args.num_blocks,
            block_size=16,
            requests_per_batch=args.requests_per_batch,
            seed=args.seed * 100 + w,
        )
        for w in range(args.workers)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=1800.0)
    parser.add_argument("--warmup-s", type=float, default=300.0)
    parser.add_argument("--window-s", type=float, default=300.0)
    parser.add_argument("--blocks-per-s", type=float, default=100_000.0)
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--pods", type=int, default=8, help="pods in all (dp sizes 1, 2, 1, ...)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--churn-interval-s", type=float, default=5.0)
    parser.add_argument("--rss-interval-s", type=float, default=5.0)
    parser.add_argument("--cycle-blocks", type=int, default=80_000, help="per slot and cycle")
    parser.add_argument("--num-blocks", type=int, default=8192, help="per engine")
    parser.add_argument("--requests-per-batch", type=int, default=4)
    parser.add_argument("--lookup-bodies", type=int, default=2000)
    parser.add_argument("--final-queries", type=int, default=2000)
    parser.add_argument("--settle-timeout-s", type=float, default=900.0)
    parser.add_argument("--max-rss-mib", type=float, default=6144.0, help="abort the run above")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    configs = fleet_configs(args)
    result: dict[str, Any] = {
        "benchmark": "soak",
        "machine": {
            "cpus": os.cpu_count(),
            "note": "2 cores shared with other work (other sessions' builds and tests ran "
            "alongside): the daemon, the fleet processes and the load generator share them",
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "kvsync": {"version": kvsync.__version__, "source": str(Path(kvsync.__file__).parent)},
        "config": dict(vars(args)),
    }
    scratch = tempfile.TemporaryDirectory(prefix="kvsync-soak-")
    endpoints_file = Path(scratch.name) / "endpoints.json"
    log_file = Path(scratch.name) / "daemon.log"
    started = time.monotonic()
    workers = Workers(configs)
    daemon: subprocess.Popen[bytes] | None = None
    lookups: Lookups | None = None
    try:
        documents: list[list[dict[str, Any]]] = []
        for conn in workers.conns:
            _, document, _ = conn.recv()
            documents.append(document)
        result["setup_recording_s"] = round(time.monotonic() - started, 1)
        _write_endpoints(endpoints_file, documents)
        port = _free_port()
        with log_file.open("wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "kvsync", "serve", "--discovery", "static",
                 "--endpoints-file", str(endpoints_file), "--http-host", "127.0.0.1",
                 "--http-port", str(port), "--log-level", "info", "--drain-seconds", "0"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        workers.call_all("subscribed", 60.0)
        _wait(lambda: len(_pods(port)) == sum(len(_pods_of(d)) for d in documents), 60, "pods")
        bodies = [q for part in workers.call_all("queries", args.lookup_bodies // args.workers)
                  for q in part]  # fmt: skip
        requests = [http_request("/v1/match", json.dumps(q.body()).encode()) for q in bodies]
        workers.call_all("start")
        lookups = Lookups(port, requests, args.rps)
        loader = threading.Thread(target=lookups.run, name="lookups")
        loader.start()
        t0 = time.monotonic()
        rss: list[tuple[float, int]] = []
        windows: list[dict[str, Any]] = []
        churn: Counter[str] = Counter()
        window_churn: Counter[str] = Counter()
        before = Counters.read(port, daemon.pid)
        cpu_at_t0 = before.cpu_s  # the daemon's start-up and warm start are not the soak
        sent_before = sum(s["sent_blocks"] for s in workers.call_all("stats"))
        sent_at_t0, applied_at_t0 = sent_before, before.stored + before.removed
        fleet_cpu_before = sum(s["cpu_s"] for s in workers.call_all("stats"))
        next_rss, next_churn, next_window = t0, t0 + args.churn_interval_s, t0 + args.window_s
        end = t0 + args.duration_s
        while True:
            now = time.monotonic()
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode}")
            if lookups.failure is not None:
                raise RuntimeError(f"lookups failed: {lookups.failure!r}")
            if now >= next_rss:
                rss.append((now - t0, _rss_kib(daemon.pid)))
                next_rss += args.rss_interval_s
                if rss[-1][1] > args.max_rss_mib * 1024:
                    # A daemon that falls behind queues the backlog in memory: stop before it
                    # takes a shared machine's memory (the windows so far are reported).
                    result["aborted"] = (
                        f"daemon RSS over {args.max_rss_mib} MiB at {now - t0:.0f} s"
                    )
                    end = now
            if now >= next_churn and now < end:
                op = rng.choices(CHURN_OPS, CHURN_WEIGHTS)[0]
                w = rng.randrange(args.workers)
                done = workers.call(w, "churn", op)
                if op == "replace":  # the fleet rebound the pod: tell the daemon
                    documents[w] = done["endpoints"]
                    _write_endpoints(endpoints_file, documents)
                    daemon.send_signal(signal.SIGHUP)
                churn[op] += 1
                window_churn[op] += 1
                next_churn += args.churn_interval_s
            if now >= next_window or now >= end:
                counters = Counters.read(port, daemon.pid)
                stats = workers.call_all("stats")
                sent = sum(s["sent_blocks"] for s in stats)
                fleet_cpu = sum(s["cpu_s"] for s in stats)
                seconds = counters.at - before.at
                start_s = round(before.at - t0, 1)
                samples = [s for s in lookups.samples if before.at <= s[0] < counters.at]
                in_window = [kib for at, kib in rss if start_s <= at <= counters.at - t0]
                windows.append(
                    {
                        "start_s": start_s,
                        "end_s": round(counters.at - t0, 1),
                        **_latency(samples, seconds),
                        "sent_blocks_per_s": round((sent - sent_before) / seconds),
                        "applied_blocks_per_s": round(
                            (counters.stored + counters.removed - before.stored - before.removed)
                            / seconds
                        ),
                        "applied_stored_blocks_per_s": round(
                            (counters.stored - before.stored) / seconds
                        ),
                        "applied_removed_blocks_per_s": round(
                            (counters.removed - before.removed) / seconds
                        ),
                        "daemon_cpu_percent": round(
                            100 * (counters.cpu_s - before.cpu_s) / seconds, 1
                        ),
                        "fleet_cpu_percent": round(100 * (fleet_cpu - fleet_cpu_before) / seconds),
                        # Sent but not yet applied (stored + removed, since the soak began): a
                        # daemon that keeps up holds this near zero; one that does not queues
                        # the difference in its ZMQ receive buffers (RSS grows with it).
                        "backlog_blocks": round(
                            (sent - sent_at_t0)
                            - (counters.stored + counters.removed - applied_at_t0)
                        ),
                        "rss_mib_max": round(max(in_window) / 1024, 1) if in_window else None,
                        "gaps": int(counters.gaps - before.gaps),
                        "replays": _delta(counters.replays, before.replays),
                        "resets": _delta(counters.resets, before.resets),
                        "churn": dict(window_churn),
                    }
                )
                print(json.dumps(windows[-1]), file=sys.stderr, flush=True)  # progress
                before, sent_before, fleet_cpu_before = counters, sent, fleet_cpu
                window_churn = Counter()
                next_window += args.window_s
                if now >= end:
                    break
            wake = min(next_rss, next_churn, next_window, end)
            time.sleep(max(0.0, min(1.0, wake - time.monotonic())))
        lookups.stop.set()
        loader.join(30)
        totals = Counters.read(port, daemon.pid)
        stable = [kib for at, kib in rss if at >= args.warmup_s]
        all_samples = lookups.samples
        result["windows"] = windows
        run_s = totals.at - t0
        result["lookups_total"] = _latency(all_samples, end - t0)
        result["lookups_total"]["reconnects"] = lookups.reconnects
        result["ingest"] = {
            "target_blocks_per_s": args.blocks_per_s,
            "applied_blocks_per_s": round((totals.stored + totals.removed) / run_s),
            "applied_stored_blocks_per_s": round(totals.stored / run_s),
            "applied_removed_blocks_per_s": round(totals.removed / run_s),
            "applied_stored_blocks": int(totals.stored),
        }
        result["rss"] = {
            "samples": len(rss),
            "post_warmup_samples": len(stable),
            "first_mib": round(rss[0][1] / 1024, 1),
            "post_warmup_min_mib": round(min(stable) / 1024, 1) if stable else None,
            "post_warmup_max_mib": round(max(stable) / 1024, 1) if stable else None,
            "post_warmup_max_over_min": round(max(stable) / min(stable), 4) if stable else None,
            "within_5_percent": (max(stable) / min(stable) <= 1.05) if stable else None,
            "last_mib": round(rss[-1][1] / 1024, 1),
        }
        result["churn_applied"] = dict(churn)
        result["daemon_counters"] = {
            "gaps": int(totals.gaps),
            "replays": totals.replays,
            "resets": totals.resets,
            "cpu_percent": round(100 * (totals.cpu_s - cpu_at_t0) / run_s, 1),
        }
        result["final_check"] = _final_check(
            workers, port, args.final_queries // args.workers, args.settle_timeout_s
        )
        counters = Counters.read(port, daemon.pid)
        result["final_check"]["resets_while_quiescing"] = _delta(counters.resets, totals.resets)
    except Exception as exc:  # noqa: BLE001  # the JSON still comes out, with what went wrong
        result["error"] = repr(exc)
    finally:
        if lookups is not None:
            lookups.stop.set()
        workers.close()
        if daemon is not None:
            daemon.terminate()
            try:
                result["daemon_exit_code"] = daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                result["daemon_exit_code"] = "killed"
            result["daemon_log"] = _log_summary(log_file)
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        result["wall_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(result, indent=2))
        scratch.cleanup()


def _pods_of(document: list[dict[str, Any]]) -> list[str]:
    """The endpoint names ("pod#rank") of one endpoints-file document."""
    return [f"{e['name']}#{r}" for e in document for r in range(int(e.get("dp_size", 1)))]


if __name__ == "__main__":
    main()
