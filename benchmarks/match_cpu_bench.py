"""CPU the daemon's HTTP side spends per request, measured where noise matters least.

The API (the real app on uvicorn, as ``kvsync serve`` runs it) serves an in-memory index holding
one 8,192-token prompt on 16 endpoints; a client in another process sends N keep-alive requests
back to back (``GET /livez``, then ``POST /v1/match`` with the first 2,048 and all 8,192 tokens,
every one matching on all 16 endpoints). CPU is this process's ``time.process_time()`` over the
requests, so it counts the server's threads only: on a shared, loaded machine the wall-clock
latencies swing several-fold between runs while CPU per request moves far less. Compare two
trees by running each (``PYTHONPATH=<tree>``), alternating. Prints one JSON document.

    .venv/bin/python benchmarks/match_cpu_bench.py [--requests 2000] [--rounds 3] [--with-load]

``--with-load``: every endpoint also has a scraped load (the daemon's load table, filled as the
scraper fills it), so each match carries 16 ``load`` objects: what a daemon scraping its engines
answers. (The answer memo for ``/v1/feedback`` is always on, as in the daemon.)
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# The API test harness serves the same app as ``kvsync serve`` on a free port.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvsync.http.loads import NO_LOAD, LoadViews
from kvsync.index.memory import index
from kvsync.model import EndpointId
from tests.integration.api_harness import running_api, store

CLIENT = r"""
import json, socket, sys, time
port, size, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if size:
    body = json.dumps({"model": "llama", "token_ids": list(range(size))}).encode()
    head = b"POST /v1/match HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    request = head + b"content-length: %d\r\n\r\n" % len(body) + body
else:
    request = b"GET /livez HTTP/1.1\r\nhost: x\r\n\r\n"
sock = socket.create_connection(("127.0.0.1", port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
latencies = []
for _ in range(n):
    started = time.perf_counter()
    sock.sendall(request)
    reply = b""
    while True:
        reply += sock.recv(65536)
        head, sep, rest = reply.partition(b"\r\n\r\n")
        if sep:
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            if len(rest) >= length:
                break
    latencies.append(time.perf_counter() - started)
latencies = sorted(latencies[n // 10:])
p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
print(json.dumps([p50 * 1e3, p99 * 1e3]))
"""
SIZES = (0, 2048, 8192)


def _load(with_load: bool) -> "LoadViews":
    """``running_api``'s load argument: a load table with every endpoint scraped, or nothing."""
    if not with_load:
        return NO_LOAD
    from kvsync.daemon.load_views import TableViews
    from kvsync.load.table import LoadTable
    from kvsync.load.values import EngineLoad
    from kvsync.model import Endpoint

    table = LoadTable(lambda endpoint: "http://127.0.0.1:8000")
    for pod in range(16):
        table.set_endpoint(Endpoint(EndpointId(f"default/pod-{pod}", 0), "llama", "tcp://x:1"))
    table.take_changes()
    for pod in range(16):
        figures = EngineLoad(running=3, waiting=1, kv_cache_usage=0.5, prefix_queries=1000.0,
                             prefix_hits=500.0)  # fmt: skip
        table.record(EndpointId(f"default/pod-{pod}", 0), figures, time.monotonic())
    return TableViews(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--with-load", action="store_true")
    args = parser.parse_args()
    prefix_index = index.PrefixIndex()
    for pod in range(16):
        endpoint = EndpointId(f"default/pod-{pod}", 0)
        store(prefix_index, endpoint, list(range(8192)), first_hash=pod * 10**6, block_size=16)
    runs: dict[int, list[tuple[float, float, float]]] = {size: [] for size in SIZES}
    with running_api(prefix_index, load=_load(args.with_load)) as harness:
        for _ in range(args.rounds):
            for size in SIZES:
                before = time.process_time()
                command = [sys.executable, "-c", CLIENT, str(harness.port), str(size)]
                out = subprocess.run(
                    [*command, str(args.requests)], capture_output=True, text=True, check=True
                ).stdout
                cpu_us = (time.process_time() - before) / args.requests * 1e6
                p50, p99 = json.loads(out)
                runs[size].append((cpu_us, p50, p99))
    result = {
        "benchmark": "match_cpu",
        "requests": args.requests,
        "rounds": args.rounds,
        **{
            ("livez" if size == 0 else f"match_{size}"): {
                "server_cpu_us_median": round(statistics.median(r[0] for r in rs), 1),
                "p50_ms_median": round(statistics.median(r[1] for r in rs), 3),
                "p99_ms_median": round(statistics.median(r[2] for r in rs), 3),
                "server_cpu_us_per_round": [round(r[0], 1) for r in rs],
            }
            for size, rs in runs.items()
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
