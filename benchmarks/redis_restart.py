"""A writer on the Redis backend killed with SIGKILL at full ingest, and started again.

The soak's parts (``soak.py``, ``soak_fleet.py``): ``--workers`` fleet processes replay recorded
engine traffic through the simulator's publishers at ``--blocks-per-s`` (stored + removed);
``kvsync serve --index-backend redis`` (static discovery) writes into a Redis Cluster this script
starts (scripts/redis-cluster.sh). After ``--kill-after-s`` the daemon is killed (SIGKILL: no
flush, no goodbye) and started again at once with the same arguments while the fleet keeps
publishing. Reported: how long until every endpoint is live again at the fleet's current seq
(catch-up), how many endpoints resumed from a stored seq (the ``resumed`` log line) and whether
any was reset (a replay from 0 cannot succeed here: the publishers' buffers stopped reaching
seq 0 long before), lookups answered meanwhile, and, after ``--after-s`` more of traffic, the
soak's ground-truth check (traffic stopped, every endpoint fast-forwarded to a known state):
precision and recall of matched blocks, i.e. divergent blocks.

    .venv/bin/python benchmarks/redis_restart.py [--blocks-per-s 100000] [--kill-after-s 30]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from soak import (
    Counters,
    Workers,
    _final_check,
    _free_port,
    _pods,
    _pods_of,
    _wait,
    _write_endpoints,
    fleet_configs,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "redis-cluster.sh"


def _serve(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kvsync", "serve", *args], stdout=out, stderr=subprocess.STDOUT
        )


def _events(log: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks-per-s", type=float, default=100_000.0)
    parser.add_argument("--kill-after-s", type=float, default=30.0)
    parser.add_argument("--after-s", type=float, default=20.0)
    parser.add_argument("--pods", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--final-queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--cycle-blocks", type=int, default=80_000, help="per slot and cycle")
    parser.add_argument("--num-blocks", type=int, default=8192, help="per engine")
    parser.add_argument("--requests-per-batch", type=int, default=4)
    args = parser.parse_args()
    configs = fleet_configs(args)
    result: dict[str, Any] = {
        "benchmark": "redis_restart",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "config": dict(vars(args)),
    }
    scratch = Path(tempfile.mkdtemp(prefix="kvsync-redis-restart-"))
    url = subprocess.run(
        [str(SCRIPT), "start", str(scratch / "redis")], check=True, capture_output=True, text=True
    ).stdout.strip()
    endpoints_file, log = scratch / "endpoints.json", scratch / "daemon.log"
    workers = Workers(configs)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        documents = [conn.recv()[1] for conn in workers.conns]
        _write_endpoints(endpoints_file, documents)
        expected = sum(len(_pods_of(d)) for d in documents)
        port = _free_port()
        serve_args = [
            "--discovery", "static", "--endpoints-file", str(endpoints_file),
            "--http-host", "127.0.0.1", "--http-port", str(port), "--drain-seconds", "0",
            "--index-backend", "redis", "--redis-url", url,
        ]  # fmt: skip
        daemon = _serve(serve_args, log)
        workers.call_all("subscribed", 60.0)
        _wait(lambda: len(_pods(port)) == expected, 60, "pods")
        workers.call_all("start")
        start = Counters.read(port, daemon.pid)
        time.sleep(args.kill_after_s)  # the load runs this long before the fault
        before = {e: p["last_seq"] for e, p in _pods(port).items()}
        end = Counters.read(port, daemon.pid)
        seconds = end.at - start.at
        result["before_kill"] = {
            "applied_blocks_per_s": round(
                (end.stored + end.removed - start.stored - start.removed) / seconds
            ),
            "daemon_cpu_percent": round(100 * (end.cpu_s - start.cpu_s) / seconds, 1),
        }
        daemon.kill()
        daemon.wait(10)
        killed_at = time.monotonic()
        daemon = _serve(serve_args, log)

        def caught_up() -> bool:
            try:
                pods = _pods(port)
            except OSError:
                return False
            return len(pods) == expected and all(
                p["state"] == "live" and p["last_seq"] is not None
                and p["last_seq"] >= before.get(e, 0)
                for e, p in pods.items()
            )  # fmt: skip

        _wait(caught_up, 120, "the restarted daemon live on every endpoint")
        result["catch_up_s"] = round(time.monotonic() - killed_at, 2)
        pods = _pods(port)
        result["after_restart"] = {
            "states": dict(Counter(p["state"] for p in pods.values())),
            "resets": sum(p["resets"] for p in pods.values()),
            "resumed_endpoints": len(_events(log, "resumed")),
            "endpoints": expected,
            "min_resumed_seq": min((e["last_seq"] for e in _events(log, "resumed")), default=None),
        }
        time.sleep(args.after_s)  # traffic goes on after the restart
        result["final_check"] = _final_check(workers, port, args.final_queries // args.workers, 600)
        pods = _pods(port)
        result["final_check"]["resets_since_restart"] = sum(p["resets"] for p in pods.values())
    except Exception as exc:  # noqa: BLE001  # the JSON still comes out, with what went wrong
        result["error"] = repr(exc)
    finally:
        workers.close()
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        subprocess.run([str(SCRIPT), "stop", str(scratch / "redis")], check=False)
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
