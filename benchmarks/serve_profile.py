"""Where a lookup's time goes in kvsync under ``serve_bench.py``'s load (8k-token prompts).

Starts the same publishers and ``kvsync serve`` as ``serve_bench.py``, stores the setup and bulk
segments, then for each scenario (no ingest, then 100k blocks/s of churn) drives ``--rate`` rps
of 8,192-token ``/v1/match`` requests over one keep-alive connection and reads:

* the daemon's own timers (``/metrics`` before and after): ``kvsync_match_duration_seconds``
  (decode, lock, walk, answer, encode: the handler's synchronous part), and
  ``kvsync_index_lock_{wait,hold}_seconds{side="http"}`` (the hold is the index walk);
* with py-spy on PATH (``pip install py-spy``, only for this), two samplings of the daemon's
  threads, every thread with ``--idle`` and then only the thread holding the GIL (``--gil``),
  folded into categories by the frames on each stack (``CATEGORIES``); the difference of the
  two is time a thread was in that code without the GIL (waiting for it).
* publish -> queryable lag under the churn, polling back to back (as ``serve_bench.py``) and
  with a 1 ms pause between polls (what the HTTP thread's constant demand for the GIL costs the
  ingest thread).

Prints one JSON document.

    .venv/bin/python benchmarks/serve_profile.py [--rate 500] [--seconds 10]
"""

import argparse
import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgspec
import serve_bench as sb
import serve_workload as wl

# First match wins, tested from the innermost frame outwards: a stack is charged to the most
# specific code it is in. Patterns are searched in py-spy's "function (file:line)" frames.
CATEGORIES: list[tuple[str, str]] = [
    ("http: JSON decode (msgspec, MatchRequest)", r"_decode \(.*kvsync/api\.py"),
    ("http: index lock + walk (C)", r"match \(.*kvsync/(index|lookup)\.py"),
    ("http: index lock wait", r"match \(.*kvsync/api\.py"),
    ("http: answer structs", r"_answer \(.*kvsync/api\.py"),
    ("http: prometheus observe/inc", r"prometheus_client"),
    ("http: body receive (ASGI)", r"_body \(.*kvsync/api\.py"),
    ("http: match_raw (JSON encode)", r"match_raw \(.*kvsync/api\.py"),
    ("http: ASGI App.__call__ (send)", r"__call__ \(.*kvsync/api\.py"),
    ("http: uvicorn httptools protocol", r"uvicorn/protocols/http"),
    ("http: uvicorn server/loop", r"uvicorn/|asyncio/|uvloop"),
    ("ingest: decode", r"kvsync/decoder\.py|kvsync/wire\.py"),
    ("ingest: index apply (C table)", r"kvsync/index\.py|kvsync/keytable|kvsync/contexts\.py"),
    ("ingest: handler", r"kvsync/handler\.py"),
    ("ingest: lock/bookkeeping", r"kvsync/subscription\.py|kvsync/ingest\.py"),
    ("ingest: zmq poll/recv", r"kvsync/subscribers\.py|zmq/"),
    ("other", r""),
]


def _metrics(client: sb.Client) -> dict[str, float]:
    _, body = client.send(sb.Client.request("GET", "/metrics"))
    values: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _mean_ms(
    before: dict[str, float], after: dict[str, float], name: str, labels: str = ""
) -> float:
    total = after.get(f"{name}_sum{labels}", 0.0) - before.get(f"{name}_sum{labels}", 0.0)
    count = after.get(f"{name}_count{labels}", 0.0) - before.get(f"{name}_count{labels}", 0.0)
    return round(1000 * total / count, 4) if count else 0.0


def _fold(raw: Path, requests: int, rate: int) -> dict[str, dict[str, float]]:
    """py-spy raw (collapsed) output -> thread -> category -> ms per request."""
    per: dict[str, Counter[str]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = "http" if any("uvicorn" in f for f in frames) else "ingest"
        if any(re.search(r"kvsync/subscribers\.py", f) for f in frames):
            thread = "ingest"
        if not any("kvsync/" in f or "uvicorn" in f for f in frames):
            thread = "other threads"
        category = "other"
        for frame in reversed(frames):
            found = next((name for name, pattern in CATEGORIES if re.search(pattern, frame)), None)
            if found is not None and found != "other":
                category = found
                break
        if thread == "http" and any(
            re.search(r"select|epoll|run_once|_run_once|poll \(", f) for f in frames[-2:]
        ):
            category = "http: idle (waiting for a request)"
        if thread == "ingest" and frames[-1].startswith("poll (") and "zmq" in frames[-1]:
            category = "ingest: idle (zmq poll)"
        per.setdefault(thread, Counter())[category] += int(count)
    scale = 1000 / rate / requests
    return {
        thread: {k: round(v * scale, 4) for k, v in counts.most_common()}
        for thread, counts in per.items()
    }


def _scenario(
    system: sb.Kvsync,
    client: sb.Client,
    requests: list[bytes],
    args: argparse.Namespace,
    *,
    scratch: Path,
    label: str,
) -> dict[str, Any]:
    assert system.process is not None
    pid = system.process.pid
    before = _metrics(client)
    cpu0 = sb.cpu_seconds(pid)
    result = sb.paced(client, requests, args.rate, args.seconds)
    cpu = sb.cpu_seconds(pid) - cpu0
    after = _metrics(client)
    out: dict[str, Any] = {"client": result}
    count = int(args.rate * args.seconds)
    out["daemon_cpu_ms_per_request"] = round(1000 * cpu / count, 4)
    out["handler_ms_mean"] = _mean_ms(before, after, "kvsync_match_duration_seconds")
    out["lock_wait_ms_mean"] = _mean_ms(
        before, after, "kvsync_index_lock_wait_seconds", '{side="http"}'
    )
    out["lock_hold_ms_mean"] = _mean_ms(
        before, after, "kvsync_index_lock_hold_seconds", '{side="http"}'
    )
    # The venv's bin is not always on PATH (``.venv/bin/python benchmarks/...``).
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        return out
    for mode in ("all", "gil"):
        raw = scratch / f"{label}-{mode}.txt"
        command = [spy, "record", "--pid", str(pid), "--rate", str(args.spy_rate),
                   "--duration", str(int(args.seconds)), "--format", "raw", "--nonblocking",
                   "--threads", "--output", str(raw)]  # fmt: skip
        command += ["--idle"] if mode == "all" else ["--gil"]
        spying = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches before the load starts
        sb.paced(client, requests, args.rate, args.seconds)
        spying.wait(60)
        out[f"py_spy_{mode}_ms_per_request"] = _fold(raw, count, args.spy_rate)
    return out


def _lags_with_pause(
    system: sb.System, client: sb.Client, conn: Connection, *, first: int, count: int, pause: float
) -> list[float]:
    result = []
    for number in range(first, first + count):
        endpoint = number % wl.ENDPOINTS
        raw = system.query(wl.foreign_tokens(2, number))
        conn.send(("probe", endpoint, number))
        while True:
            _, body = client.send(raw)
            seen = time.monotonic()
            if wl.pod_name(endpoint) in system.answer(body):
                break
            time.sleep(pause)
        result.append(seen - conn.recv())
        time.sleep(0.005 + 0.005 * (number % 3))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--spy-rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--bulk-blocks", type=int, default=200_000)
    parser.add_argument("--probes", type=int, default=150)
    args = parser.parse_args()
    built = wl.load_or_build(args.bulk_blocks, sb.CACHE)
    spawn = multiprocessing.get_context("spawn")
    report: dict[str, Any] = {"benchmark": "serve_profile", "rate": args.rate, "prompt": 8192}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        built_file = scratch / "streams.msgpack"
        built_file.write_bytes(msgspec.msgpack.encode(built))
        ports = [sb._free_port() for _ in range(wl.ENDPOINTS)]
        system = sb.Kvsync(ports, scratch / "kvsync.log")
        parent, child = spawn.Pipe()
        publisher = spawn.Process(target=sb.publish, args=(child, str(built_file), ports))
        publisher.start()
        try:
            assert parent.recv() == "bound"
            system.start()
            parent.send(("subscribers",))
            parent.recv()
            client = sb.Client(system.http_port)
            for segment, marker in (("setup", sb.MARKER_SETUP), ("bulk", sb.MARKER_BULK)):
                parent.send(("segment", segment, marker))
                parent.recv()
                sb.wait_marker(system, client, marker, 600)
            requests = [system.query(p) for p in built.doc_queries[8192]]
            sb.paced(client, requests, 200, 1.0)  # warm-up
            report["no_ingest"] = _scenario(
                system, client, requests, args, scratch=scratch, label="idle"
            )
            parent.send(("churn", sb.CHURN_BLOCKS_PER_S))
            parent.recv()
            time.sleep(1.0)
            report["ingest_100k"] = _scenario(
                system, client, requests, args, scratch=scratch, label="ingest"
            )
            for label, pause in (("back_to_back", 0.0), ("pause_1ms", 0.001)):
                first = 1000 if pause else 0
                lag = _lags_with_pause(
                    system, client, parent, first=first, count=args.probes, pause=pause
                )
                report[f"lag_ingest_{label}_p50_ms"] = round(1000 * statistics.median(lag), 3)
                report[f"lag_ingest_{label}_p99_ms"] = round(1000 * sb._pct(lag, 0.99), 3)
            parent.send(("churn", 0))
            parent.recv()
            client.close()
        finally:
            system.stop()
            parent.send(("stop",))
            publisher.join(10)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
