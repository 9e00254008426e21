"""Lookup latency by text prompt against by token ids, and Dynamo's /query against /v1/match.

One ``kvsync serve`` (static endpoints, exactly as deployed) in front of a simulated fleet whose
pods serve vLLM's ``/tokenize`` (``kvsync.sim.engine_http``, a BPE trained at start). One pod
holds a long text prompt (``--tokens`` of them). Over one keep-alive connection, closed loop,
each round sends every mode once, in a shuffled order, and the report gives per mode the median
latency over ``--rounds`` rounds and its ratio to ``token_ids`` (the baseline, same run):

* ``token_ids``: ``POST /v1/match`` with the prompt's token ids;
* ``prompt_warm``: ``POST /v1/match`` with the text (tokenize cache hit after the first round);
* ``prompt_cold``: the text with a new last word each time (a cache miss: one engine
  ``/tokenize`` round trip; the prefix and its answer are the same);
* ``query``: Dynamo's ``POST /query`` with the token ids;
* ``tokenize``: the engine's ``/tokenize`` alone, from this process (the round trip a cold
  prompt adds).

Prints one JSON document. ``--quick`` (the default) is a short run; ``--rounds N`` for more.

    .venv/bin/python benchmarks/prompt_bench.py [--rounds 400] [--tokens 2048]
"""

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import time
import urllib.parse
from typing import Any

from kvsync.sim.fleet import Fleet
from kvsync.sim.records import Request

MODEL = "sim-model"
WORDS = ["kalo", "mine", "rusa", "tovi", "pedu", "mari", "sote", "luna", "zobe", "figo", "anel"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"kvsync serve exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)  # polling readiness with a deadline
    raise SystemExit("kvsync serve did not become ready")


def _text(tokens_wanted: int, fleet: Fleet, rng: random.Random) -> str:
    assert fleet.tokenizer is not None
    words: list[str] = []
    while len(fleet.tokenizer.encode(" ".join(words))) < tokens_wanted:
        words.extend(rng.choice(WORDS) for _ in range(64))
    return " ".join(words)


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[float, bytes]:
    started = time.perf_counter()
    connection.request("POST", path, body, {"content-type": "application/json"})
    response = connection.getresponse()
    payload = response.read()
    took = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"{path}: {response.status} {payload[:200]!r}")
    return took, payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a short run (the default)")
    parser.add_argument("--tokens", type=int, default=2048)
    options = parser.parse_args()
    rounds = options.rounds or 200
    rng = random.Random(7)
    with Fleet(pods=2, dp_sizes=(1,), engine_http=True, seed=7, adapter=None) as fleet:
        port = _free_port()
        specs = [f"--endpoint={spec}" for spec in fleet.endpoint_specs()]
        process = subprocess.Popen(
            [sys.executable, "-m", "kvsync", "serve", "--http-host", "127.0.0.1",
             "--http-port", str(port), "--log-level", "warning", "--drain-seconds", "0", *specs],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_ready(port, process)
            fleet.wait_for_subscribers(30)
            text = _text(options.tokens, fleet, rng)
            assert fleet.tokenizer is not None
            tokens = fleet.tokenizer.encode(text)
            fleet.submit(fleet.ids[0], Request(prompt=tuple(tokens)))
            fleet.flush()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            by_ids = json.dumps({"model": MODEL, "token_ids": tokens}).encode()
            blocks = len(tokens) // fleet.block_size
            deadline = time.monotonic() + 30
            while True:  # until the daemon answers the whole prompt
                _, answer = _post(connection, "/v1/match", by_ids)
                matches = json.loads(answer)["matches"]
                if matches and matches[0]["matched_blocks"] == blocks:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("the prompt never became queryable")
                time.sleep(0.05)  # polling a condition with a deadline
            warm = json.dumps({"model": MODEL, "prompt": text}).encode()
            query = json.dumps({"model_name": MODEL, "token_ids": tokens}).encode()
            engine = urllib.parse.urlsplit(fleet.engine_server(fleet.ids[0].pod).url)
            engine_connection = http.client.HTTPConnection(engine.hostname or "", engine.port)
            tokenize = json.dumps({"model": MODEL, "prompt": text}).encode()
            times: dict[str, list[float]] = {
                m: [] for m in ("token_ids", "prompt_warm", "prompt_cold", "query", "tokenize")
            }
            for n in range(rounds + 5):  # the first 5 rounds warm up
                modes = list(times)
                rng.shuffle(modes)
                for mode in modes:
                    if mode == "token_ids":
                        took, _ = _post(connection, "/v1/match", by_ids)
                    elif mode == "prompt_warm":
                        took, _ = _post(connection, "/v1/match", warm)
                    elif mode == "prompt_cold":
                        cold = json.dumps({"model": MODEL, "prompt": f"{text} anel{n}x"}).encode()
                        took, _ = _post(connection, "/v1/match", cold)
                    elif mode == "query":
                        took, _ = _post(connection, "/query", query)
                    else:
                        took, _ = _post(engine_connection, "/tokenize", tokenize)
                    if n >= 5:
                        times[mode].append(took)
            base = statistics.median(times["token_ids"])
            report: dict[str, Any] = {
                "benchmark": "prompt_bench",
                "rounds": rounds,
                "prompt_tokens": len(tokens),
                "prompt_blocks": blocks,
                "modes": {
                    mode: {
                        "median_ms": round(statistics.median(values) * 1000, 3),
                        "p90_ms": round(sorted(values)[int(0.9 * len(values))] * 1000, 3),
                        "ratio_to_token_ids": round(statistics.median(values) / base, 3),
                    }
                    for mode, values in times.items()
                },
            }
            cold_added = statistics.median(times["prompt_cold"]) - base
            report["cold_added_ms"] = round(cold_added * 1000, 3)
            report["tokenize_round_trip_ms"] = report["modes"]["tokenize"]["median_ms"]
            print(json.dumps(report, indent=2))
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
