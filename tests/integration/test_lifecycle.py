"""``kvsync serve`` as a real process: readiness, SIGTERM drain and exit codes, JSON logs."""

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from kvsync.daemon import config, runtime
from kvsync.sim import Fleet

pytestmark = pytest.mark.integration

TOKEN = "lifecycle-token"  # noqa: S105  # a test token


class Daemon:
    """A ``kvsync serve`` subprocess whose stdout (JSON log lines) is read with deadlines."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvsync", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self._buffer = b""
        self.lines: list[dict[str, Any]] = []
        self.url = ""

    def _read_some(self, timeout: float) -> bool:
        assert self.proc.stdout is not None
        if not self.selector.select(timeout):
            return False
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            return False
        self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())
        return True

    def wait_for_log(self, event: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.lines if line.get("event") == event), None)
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read_some(left) and self.proc.poll() is not None):
                raise AssertionError(f"no {event!r} log line; got {self.lines}")

    def start(self) -> str:
        self.url = self.wait_for_log("daemon_started")["url"]
        return self.url

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        while self._read_some(0.0):
            pass
        return code


@contextmanager
def serve(args: list[str], env: dict[str, str] | None = None) -> Iterator[Daemon]:
    daemon = Daemon(["--http-host", "127.0.0.1", "--http-port", "0", *args], env)
    try:
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
        for stream in (daemon.proc.stdout, daemon.proc.stderr):
            if stream is not None:
                stream.close()
        daemon.selector.close()


def poll(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)  # polling a condition with a deadline, not waiting for a socket


def _status(http: httpx.Client, path: str) -> int:
    return http.get(path).status_code


def test_sigterm_turns_readyz_503_drains_and_exits_0() -> None:
    with Fleet(pods=1, dp_sizes=(2,), seed=3) as fleet:
        spec = fleet.endpoint_specs()[0]
        args = ["--endpoint", spec, "--drain-seconds", "1", "--stop-timeout-seconds", "2"]
        with serve(args, {"KVSYNC_API_TOKEN": TOKEN}) as daemon:
            url = daemon.start()
            with httpx.Client(base_url=url, timeout=5) as http:
                poll(lambda: _status(http, "/readyz") == 200, what="/readyz 200")
                assert _status(http, "/livez") == 200
                fleet.wait_for_subscribers()
                fleet.step(10)
                fleet.flush()
                auth = {"authorization": f"Bearer {TOKEN}"}

                def ingested() -> bool:
                    pods = http.get("/v1/pods", headers=auth).json()["pods"]
                    return len(pods) == 2 and sum(p["blocks"] for p in pods) > 0

                poll(ingested, what="blocks in /v1/pods")
                pods = http.get("/v1/pods", headers=auth).json()["pods"]
                assert {p["engine"] for p in pods} == {"http://127.0.0.1:8000"}  # --engine-port
                scraped = http.get("/metrics").text  # scrape-time values from the live daemon
                assert 'kvsync_endpoints{state="live"} 2.0' in scraped
                assert 'kvsync_blocks_applied_total{type="stored"} 0.0' not in scraped
                assert "kvsync_index_keys 0.0" not in scraped
                assert 'kvsync_index_lock_hold_seconds_count{side="ingest"}' in scraped
                started = time.monotonic()
                daemon.proc.send_signal(signal.SIGTERM)
                poll(lambda: _status(http, "/readyz") == 503, what="/readyz 503")
                assert http.get("/readyz").json() == {"error": "stopping"}
                assert _status(http, "/livez") == 200  # still answering while draining
            assert daemon.finish(timeout=1 + 3 * 2 + 5) == 0
            took = time.monotonic() - started
    assert took < 1 + 3 * 2 + 5
    events = [line["event"] for line in daemon.lines]
    assert events.index("config_loaded") < events.index("daemon_started")
    assert events.index("draining") < events.index("exiting")
    assert daemon.wait_for_log("exiting")["code"] == 0
    config_line = daemon.wait_for_log("config_loaded")
    assert config_line["api_token"] == config.REDACTED
    assert TOKEN not in json.dumps(daemon.lines)
    assert all({"timestamp", "level", "event"} <= set(line) for line in daemon.lines)
    uvicorn_lines = [line for line in daemon.lines if line.get("logger") == "uvicorn.error"]
    assert uvicorn_lines  # stdlib loggers come out as the same JSON lines
    assert all("color_message" not in line for line in uvicorn_lines)


def test_second_signal_exits_at_once_with_128_plus_signum() -> None:
    with serve(["--drain-seconds", "60"]) as daemon:
        url = daemon.start()
        with httpx.Client(base_url=url, timeout=5) as http:
            poll(lambda: _status(http, "/readyz") == 200, what="/readyz 200")
            daemon.proc.send_signal(signal.SIGTERM)
            poll(lambda: _status(http, "/readyz") == 503, what="/readyz 503")
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.finish(timeout=10) == 128 + signal.SIGTERM


def test_sigint_without_endpoints_is_ready_at_once_and_exits_0() -> None:
    with serve(["--drain-seconds", "0"]) as daemon:
        url = daemon.start()
        with httpx.Client(base_url=url, timeout=5) as http:
            assert http.get("/readyz").json() == {"status": "ok"}
            assert http.get("/v1/pods").json() == {
                "pods": [],
                "shard": {"index": 0, "count": 1, "skipped_endpoints": 0},
            }
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.finish(timeout=20) == 0


def test_bad_configuration_exits_2_with_one_line() -> None:
    with serve(["--drain-seconds", "soon"]) as daemon:
        assert daemon.finish(timeout=20) == 2
        assert daemon.proc.stderr is not None
        err = daemon.proc.stderr.read().decode()
    assert err == "kvsync: --drain-seconds: expected a number of seconds >= 0\n"


def test_address_in_use_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with serve(["--http-port", str(port)]) as daemon:
            assert daemon.finish(timeout=20) == 2
            assert daemon.proc.stderr is not None
            err = daemon.proc.stderr.read().decode()
    assert err.startswith(f"kvsync: cannot listen on 127.0.0.1:{port}")
    assert err.count("\n") == 1


@pytest.mark.parametrize("component", ["ingest", "http"])
def test_a_crashed_component_is_logged_and_the_exit_code_is_1(component: str) -> None:
    settings = config.load(["--http-host", "127.0.0.1", "--http-port", "0"], {})
    daemon = runtime.Daemon(settings)
    daemon.start()
    # What the component's thread guard does when its thread dies of an unexpected error.
    crashed = daemon.ingest.failed if component == "ingest" else daemon.http_crashed
    crashed.set()
    with capture_logs() as logs:
        code, clean = runtime.supervise(daemon, threading.Event())
    assert (code, clean) == (1, True)
    assert {"event": "component_crashed", "component": component, "log_level": "error"} in logs
    assert not daemon.http.alive
