"""Fuzz campaign: a million hostile frames against ``kvsync serve`` over real ZMQ.

The daemon runs as deployed (``kvsync serve`` in a subprocess, static endpoints) and subscribes
to two publishers in this process:

* ``fuzz/pod``: a ``kvsync.sim.fuzz_publisher.FuzzPublisher`` sending ``kvsync.sim.mutations``
  output seeded by the golden captures (tests/data/vectors) and the simulator's traffic in every
  vLLM layout: byte damage, 1,000-5,000 levels of nesting (in extra_keys, under unknown keys, in
  other fields), huge / negative / float ints, wrong types, oversized arrays, 1/2/4/5 frames,
  bad seq frames, seq jumps; its ROUTER answers replay requests just as hostilely;
* a simulated vLLM pod (``kvsync.sim.Fleet``, with replay) publishing real traffic through the
  storm, whose ground truth is known.

Checked and reported: the daemon never exits and ``/livez`` stays 200 (``crashes`` counts exits,
failed probes and ``ingest_failed`` log lines); after the storm the fuzzed pod indexes a fresh
valid stream from seq 0 (``fuzzed_pod_recovered``) and every sampled ``/v1/match`` answer about
the good pod equals the simulator's ground truth; rejections by reason (``/metrics``); the
daemon's RSS (VmRSS of the subprocess) before, during and after, and its peak (VmHWM).

The XPUB does not drop (``XPUB_NODROP``), and the sender stays about ``--window`` messages
ahead of what the daemon has read (``pace``): the daemon's default receive queue holds 100,000
messages, and an unpaced campaign would measure that queue, not the daemon. Exits 1 when a
check fails. Prints one JSON document; progress goes to stderr.

    .venv/bin/python benchmarks/fuzz_campaign.py [--frames 1000000] [--seed 20261122] [--quick]
"""

import argparse
import base64
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from pathlib import Path
from typing import Any

from kvsync.sim import Fleet
from kvsync.sim.fuzz_publisher import FuzzPublisher
from kvsync.sim.mutations import Mutator, era_seeds, probe

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "data" / "vectors"
FUZZ_POD = "fuzz/pod"
FUZZ_MODEL = "fuzz-model"
PING_EVERY = 1_000  # frames between two pacing pings
RSS_BUDGET_MB = 64.0  # growth of the daemon's RSS over the campaign, once warm
_METRIC = re.compile(r'^(kvsync_[a-z_]+?)(?:_total)?(?:\{reason="([a-z_]+)"\})? ([0-9.e+]+)$')


def golden_seeds() -> list[list[bytes]]:
    """The live frames of every golden capture (tests/data/vectors/README.md)."""
    seeds = []
    for path in sorted(VECTORS.glob("vllm-*.json")):
        doc = json.loads(path.read_text())
        seeds += [[base64.b64decode(f) for f in m["frames_b64"]] for m in doc["live"]]
    return seeds


def free_port() -> int:
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


class Daemon:
    """``kvsync serve`` in a subprocess, its HTTP API, and its /proc status."""

    def __init__(self, endpoints: list[str], log_path: Path) -> None:
        self.port = free_port()
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kvsync", "serve", "--discovery", "static",
             "--http-host", "127.0.0.1", "--http-port", str(self.port),
             "--log-level", "warning", "--drain-seconds", "0",
             # Short replay deadlines: hostile replay answers often carry no end marker.
             "--replay-timeout-seconds", "0.2", "--replay-cooldown-seconds", "0.5",
             *(f"--endpoint={spec}" for spec in endpoints)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def get(self, path: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # a loopback URL built here
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str, body: dict[str, object] | None = None) -> Any:
        status, data = self.get(path, body)
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def metrics(self) -> dict[str, Counter[str]]:
        """Counters by name (``_total`` dropped), by reason label ("" for none)."""
        _, text = self.get("/metrics")
        out: dict[str, Counter[str]] = {}
        for line in text.decode().splitlines():
            found = _METRIC.match(line)
            if found:
                name, reason, value = found.groups()
                out.setdefault(name, Counter())[reason or ""] += int(float(value))
        return out

    def counted(self) -> int:
        """Messages the daemon has accounted for (the pacing signal; see the docstring)."""
        m = self.metrics()
        return sum(
            sum(m.get(name, Counter()).values())
            for name in (
                "kvsync_decode_errors",
                "kvsync_batches_applied",
                "kvsync_duplicates_skipped",
            )
        )

    def status_mb(self, field: str) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError(f"no {field} for pid {self.process.pid}")

    def alive(self) -> bool:
        return self.process.poll() is None and self.get("/livez")[0] == 200

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            self._log.close()


def wait_for(check: Any, timeout: float, what: str) -> None:
    """Poll ``check`` until it holds (no fixed sleeps for synchronisation)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def pods(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {p["pod"]: p for p in daemon.json("/v1/pods")["pods"]}


def good_caught_up(daemon: Daemon, fleet: Fleet) -> bool:
    (endpoint_id,) = fleet.ids
    next_seq = fleet.publisher(endpoint_id).stats.next_seq
    pod = pods(daemon).get(endpoint_id.pod)
    return pod is not None and pod["state"] != "replaying" and pod["last_seq"] == next_seq - 1


def matched(daemon: Daemon, body: dict[str, object]) -> dict[tuple[str, int], int]:
    answer = daemon.json("/v1/match", body)
    return {(m["pod"], m["dp_rank"]): m["matched_blocks"] for m in answer["matches"]}


def pace(daemon: Daemon, fuzz: FuzzPublisher, targets: deque[int], lag: int) -> None:
    """Send a ping, then wait until the daemon has read the ping sent ``lag`` pings ago.

    A ping is a one-frame message: the daemon counts it as a ``frames`` decode error the
    moment it reads it, whatever the endpoint's state (other counters miss batches a restart
    discards while they wait for a replay). Live ``frame_count`` mutants count there too and
    are known; a hostile replay reply with a wrong frame count adds to the counter as well,
    which can only let the sender run a little further ahead, never stall it.
    """
    fuzz.send([b"kvsync-fuzz-ping"], "ping")
    targets.append(fuzz.sent["ping"] + fuzz.sent["frame_count"])
    if len(targets) <= lag:
        return
    target = targets.popleft()

    def caught_up() -> bool:
        fuzz.serve_replays()
        read = daemon.metrics().get("kvsync_decode_errors", Counter())["frames"]
        return read >= target or daemon.process.poll() is not None

    wait_for(caught_up, 300.0, "the daemon to read the storm")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--window", type=int, default=4_000, help="most messages in flight")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="20,000 frames, for a smoke run")
    args = parser.parse_args()
    frames = 20_000 if args.quick else args.frames
    mutator = Mutator(golden_seeds() + era_seeds(seed=args.seed), seed=args.seed)
    log_path = Path(tempfile.mkdtemp(prefix="kvsync-fuzz-")) / "daemon.log"
    started = time.monotonic()
    failed_probes, rss_samples = 0, []
    with (
        Fleet(pods=1, dp_sizes=(1,), seed=args.seed % 1000) as fleet,
        FuzzPublisher(mutator, sndhwm=1_000, send_timeout_s=120.0) as fuzz,
    ):
        addresses = f"pub={fuzz.pub_address},replay={fuzz.replay_address}"
        fuzz_spec = f"name={FUZZ_POD},model={FUZZ_MODEL},{addresses}"
        daemon = Daemon([fuzz_spec, *fleet.endpoint_specs()], log_path)
        try:
            fleet.wait_for_subscribers(60.0)
            fuzz.wait_for_subscriber(60.0)
            fleet.step(20)
            fleet.flush()
            wait_for(lambda: good_caught_up(daemon, fleet), 60.0, "the good pod's warm start")
            rss_before, storm_started = daemon.status_mb("VmRSS"), time.monotonic()
            targets: deque[int] = deque()
            for number in range(frames):
                fuzz.send_mutant()
                if number % PING_EVERY == 0:
                    fleet.step(1)  # the good pod keeps publishing through the storm
                    pace(daemon, fuzz, targets, args.window // PING_EVERY)
                if number % 100_000 == 0:
                    if not daemon.alive():
                        failed_probes += 1
                        if daemon.process.poll() is not None:
                            break
                    rss_samples.append(daemon.status_mb("VmRSS"))
                    print(f"{number} frames, {time.monotonic() - storm_started:.0f} s, "
                          f"RSS {rss_samples[-1]} MB", file=sys.stderr)  # fmt: skip
            storm_s = time.monotonic() - storm_started
            # Recovery: a fresh, valid stream from seq 0 on the fuzzed pod. The daemon reads
            # one socket in order, so once it is indexed the storm has been consumed too.
            stream = probe()
            mutator.restart()
            for payload in stream.payloads:
                fuzz.send(mutator.valid(payload))
            body: dict[str, object] = {"model": FUZZ_MODEL, "token_ids": list(stream.token_ids)}

            def recovered() -> bool:
                fuzz.serve_replays()
                return matched(daemon, body).get((FUZZ_POD, 0)) == stream.blocks

            try:
                wait_for(recovered, 300.0, "the probe stream on the fuzzed pod")
                fuzzed_recovered = True
            except TimeoutError:
                fuzzed_recovered = False
            fleet.step(5)
            fleet.flush()
            wait_for(lambda: good_caught_up(daemon, fleet), 60.0, "the good pod after the storm")
            exact = 0
            for _ in range(args.queries):
                query = fleet.sample_query()
                truth = {(e.pod, e.dp_rank): n for e, n in fleet.ground_truth(query).items()}
                exact += matched(daemon, query.body()) == truth
            rss_after = daemon.status_mb("VmRSS")
            rss_peak = daemon.status_mb("VmHWM")
            alive = daemon.alive()
            metrics = daemon.metrics()
            per_pod = pods(daemon)
        finally:
            exit_code = daemon.stop()
    log = log_path.read_text(errors="replace")
    ingest_failed = log.count('"ingest_failed"')
    crashes = failed_probes + ingest_failed + (0 if alive else 1)
    good_pod = fleet.ids[0].pod
    decode_errors = dict(metrics.get("kvsync_decode_errors", Counter()))
    result = {
        "benchmark": "fuzz",
        "seed": args.seed,
        "frames": sum(fuzz.sent.values()),
        "storm_frames": frames,
        "frames_by_kind": dict(sorted(fuzz.sent.items())),
        "replay": {
            "requests": fuzz.replay_requests,
            "messages_sent": fuzz.replay_messages,
            "bad_requests": fuzz.bad_replay_requests,
        },
        "decode_errors_by_reason": dict(sorted(decode_errors.items())),
        "rejected_events_by_reason": dict(
            sorted(metrics.get("kvsync_events_rejected", Counter()).items())
        ),
        "resets_by_reason": dict(sorted(metrics.get("kvsync_endpoint_resets", Counter()).items())),
        "batches_applied": sum(metrics.get("kvsync_batches_applied", Counter()).values()),
        "crashes": crashes,
        "ingest_failed_logs": ingest_failed,
        "message_failed_logs": log.count('"message_failed"'),
        "daemon_exit_code": exit_code,
        "fuzzed_pod_recovered": fuzzed_recovered,
        "fuzzed_pod": {k: per_pod[FUZZ_POD][k] for k in ("state", "decode_errors", "resets")},
        "good_pod": {
            "queries": args.queries,
            "exact_answers": exact,
            "decode_errors": per_pod[good_pod]["decode_errors"],
            "resets": per_pod[good_pod]["resets"],
        },
        "rss_mb": {
            "before": rss_before,
            "samples_every_100k_frames": rss_samples,
            "after": rss_after,
            "peak_vmhwm": rss_peak,
            "growth": round(rss_after - rss_before, 1),
        },
        "storm_seconds": round(storm_s, 1),
        "frames_per_s": round(frames / storm_s),
        "duration_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result, indent=1))
    ok = (
        crashes == 0
        and exit_code == 0
        and fuzzed_recovered
        and exact == args.queries
        and result["good_pod"]["resets"] == 0
        and rss_after - rss_before < RSS_BUDGET_MB
    )
    if not ok:
        print("fuzz campaign: a check failed (see the JSON above)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
