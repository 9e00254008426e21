"""``kvsync demo``: a simulated vLLM fleet on loopback, the daemon in front of it, a live view.

I/O edge, main thread. The fleet (``kvsync.sim``) publishes the real wire format with replay;
the daemon (``kvsync.daemon.runtime.Daemon``) subscribes to it exactly as ``kvsync serve
--endpoint`` would and serves its HTTP API on 127.0.0.1. Every ``--sample-seconds`` the demo pauses
the traffic, waits until the daemon has applied every published batch, asks ``POST /v1/match``
about a realistic prompt over HTTP and compares the answer with the fleet's ground truth; then it
routes that prompt as a router would (to the best match, else any endpoint), and reports the
engine's ``cached_tokens`` to ``POST /v1/feedback``: the audit line counts kvsync's verdicts. Each
simulated pod also serves vLLM's ``/tokenize`` (``kvsync.sim.engine_http``), so the printed
``curl`` asks by text prompt, and vLLM's ``/metrics``: the table shows what the daemon scraped from
it (running and waiting requests, KV-cache usage, prefix-cache hit rate).

On a terminal the view is a ``rich`` live table; otherwise one plain line per refresh. The run
ends after ``--duration`` seconds or on Ctrl-C, with a final line
``summary samples=N agreed=N disagreed=0 ... audited=N exact=N over=0 under=0``; the exit code is
0 when every sample agreed and every audited request was exact, 1 otherwise, 2 for bad options.
Raises nothing to the CLI.
"""

import argparse
import json
import random
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from rich.console import Console, ConsoleRenderable, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kvsync import metrics
from kvsync.daemon import logs
from kvsync.daemon.config import Settings
from kvsync.daemon.runtime import Daemon
from kvsync.errors import KvsyncError
from kvsync.model import EndpointId
from kvsync.sim import Fleet, SimQuery
from kvsync.sim.records import Request

CATCH_UP_SECONDS: Final = 5.0
# A made-up text (the simulated tokenizer is trained on made-up words); no quotes: it is pasted
# into a shell command between single quotes.
CURL_PROMPT: Final = (
    "You are a helpful assistant. Summarise the kalo mine rusa report for the tovi pedu "
    "team, in three short points, and list the open questions at the end."
)


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="kvsync demo",
        description="A simulated vLLM fleet on loopback, the daemon in front of it, a live view.",
    )
    result.add_argument("--pods", type=int, default=4, help="simulated pods (default 4)")
    result.add_argument("--duration", type=float, default=None, help="seconds; default: Ctrl-C")
    result.add_argument("--http-port", type=int, default=8080, help="0 picks a free port")
    result.add_argument("--rate", type=float, default=40.0, help="requests per second")
    result.add_argument("--sample-seconds", type=float, default=3.0, help="between samples")
    result.add_argument("--seed", type=int, default=0, help="the simulation's seed")
    return result


@dataclass(slots=True)
class Sample:
    query_blocks: int
    answer: dict[EndpointId, int]
    truth: dict[EndpointId, int]
    lora_name: str | None

    @property
    def agrees(self) -> bool:
        return self.answer == self.truth


def _post(url: str, body: dict[str, object], path: str = "/v1/match") -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310  # our own http:// URL on loopback
        f"{url}{path}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310  # as above
        result: dict[str, object] = json.load(response)
        return result


def _answer(url: str, query: SimQuery) -> tuple[int, dict[EndpointId, int]]:
    """(query blocks, matched blocks per endpoint), the answer's best first."""
    body = _post(url, query.body())
    matches = body["matches"]
    assert isinstance(matches, list)  # noqa: S101  # the API's contract
    found = {EndpointId(m["pod"], m["dp_rank"]): m["matched_blocks"] for m in matches}
    query_blocks = body["query_blocks"]
    assert isinstance(query_blocks, int)  # noqa: S101  # the API's contract
    return query_blocks, found


def _feedback(url: str, query: SimQuery, endpoint: EndpointId, cached_tokens: int) -> str:
    """Report what the engine said about a routed request; kvsync's verdict (exact, over, ...)."""
    body = {**query.body(), "pod": endpoint.pod, "dp_rank": endpoint.dp_rank,
            "cached_tokens": cached_tokens}  # fmt: skip
    outcome = _post(url, body, "/v1/feedback")["outcome"]
    assert isinstance(outcome, str)  # noqa: S101  # the API's contract
    return outcome


def _caught_up(fleet: Fleet, daemon: Daemon) -> bool:
    """Every endpoint's last applied seq is its publisher's last published seq."""
    applied = {e.endpoint.id: e.last_seq for e in daemon.ingest.snapshot().endpoints}
    for endpoint in fleet.ids:
        published = fleet.publisher(endpoint).stats.next_seq - 1
        if published >= 0 and applied.get(endpoint) != published:
            return False
    return True


def _lag_totals() -> tuple[float, float]:
    total = count = 0.0
    for family in metrics.EVENT_LAG.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


class Demo:
    """The fleet, the daemon, and the view; ``run()`` returns the exit code."""

    def __init__(self, options: argparse.Namespace, fleet: Fleet, daemon: Daemon) -> None:
        self.options, self.fleet, self.daemon = options, fleet, daemon
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._last = (self.started, 0, *_lag_totals())
        self.events_per_s = 0.0
        self.lag_ms: float | None = None
        self.audit: Counter[str] = Counter()
        self._rng = random.Random(options.seed)  # noqa: S311  # which endpoint gets a miss

    def sample(self) -> Sample:
        """Pause traffic, let the daemon catch up, ask and compare; resume traffic."""
        self.fleet.stop()
        try:
            self.fleet.flush()
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while not _caught_up(self.fleet, self.daemon) and time.monotonic() < deadline:
                time.sleep(0.01)  # the daemon applies on its own thread; nothing to wait on
            query = self.fleet.sample_query()
            query_blocks, answer = _answer(self.daemon.url, query)
            truth = self.fleet.ground_truth(query)
            # Route it as a router would, and tell kvsync what the engine reported.
            chosen = next(iter(answer), None) or self._rng.choice(self.fleet.ids)
            cached = self.fleet.route(chosen, query)
            self.audit[_feedback(self.daemon.url, query, chosen, cached)] += 1
        finally:
            self.fleet.start(requests_per_s=self.options.rate)
        found = Sample(query_blocks, answer, truth, query.lora_name)
        self.samples.append(found)
        return found

    def measure(self) -> None:
        """Events/s and mean event lag since the previous call."""
        now = time.monotonic()
        events = sum(self.daemon.ingest.snapshot().events.values())
        lag_sum, lag_count = _lag_totals()
        then, events_then, lag_sum_then, lag_count_then = self._last
        self.events_per_s = (events - events_then) / max(now - then, 1e-6)
        batches = lag_count - lag_count_then
        self.lag_ms = 1000 * (lag_sum - lag_sum_then) / batches if batches else None
        self._last = (now, events, lag_sum, lag_count)

    @property
    def audit_exact(self) -> bool:
        return sum(self.audit.values()) == self.audit["exact"]

    def audit_line(self) -> str:
        counts = " ".join(f"{k}={self.audit[k]}" for k in ("exact", "over", "under", "unknown"))
        return f"audit routed={sum(self.audit.values())} {counts}"

    def plain_line(self) -> str:
        stats = self.daemon.ingest.snapshot()
        states = ",".join(f"{k}={v}" for k, v in sorted(stats.endpoints_by_state().items()))
        blocks = sum(e.blocks for e in stats.endpoints)
        lag = "-" if self.lag_ms is None else f"{self.lag_ms:.1f}ms"
        running = waiting = 0.0
        scraped = 0
        for endpoint in stats.endpoints:
            load = self.daemon.load_table.get(endpoint.endpoint.id)
            if load is not None and load.engine is not None:
                scraped += 1
                running += load.engine.running or 0.0
                waiting += load.engine.waiting or 0.0
        return (
            f"t={time.monotonic() - self.started:.0f}s endpoints={len(stats.endpoints)} "
            f"[{states}] blocks={blocks} events/s={self.events_per_s:.0f} lag={lag} "
            f"load scraped={scraped} running={running:.0f} waiting={waiting:.0f}"
        )

    def view(self) -> Group:
        stats = self.daemon.ingest.snapshot()
        table = Table(title=f"kvsync demo: {self.daemon.url}", expand=False)
        columns = ("endpoint", "state", "blocks", "last seq", "gaps", "replays", "age",
                   "running", "waiting", "kv cache", "hit rate")  # fmt: skip
        for column in columns:
            table.add_column(column, justify="left" if column == "endpoint" else "right")
        now = time.monotonic()
        for found in sorted(stats.endpoints, key=lambda e: e.endpoint.id):
            age = "-" if found.last_event_at is None else f"{now - found.last_event_at:.1f}s"
            table.add_row(
                f"{found.endpoint.id.pod}#{found.endpoint.id.dp_rank}",
                found.state,
                str(found.blocks),
                str(found.last_seq),
                str(found.gaps),
                str(found.replays),
                age,
                *_load_cells(self.daemon, found.endpoint.id),
            )
        lag = "-" if self.lag_ms is None else f"{self.lag_ms:.1f} ms"
        lines: list[ConsoleRenderable] = [
            table,
            Text(f"events/s {self.events_per_s:.0f}   mean lag {lag}"),
            Text(self.audit_line(), style="green" if self.audit_exact else "red"),
        ]
        lines.extend(
            Text(_describe(sample), style="green" if sample.agrees else "red")
            for sample in self.samples[-5:]
        )
        return Group(*lines)


def _load_cells(daemon: Daemon, endpoint: EndpointId) -> tuple[str, str, str, str]:
    """running, waiting, KV-cache usage and hit rate as the daemon scraped them."""
    load = daemon.load_table.get(endpoint)
    engine = None if load is None else load.engine
    if load is None or engine is None:
        return ("-", "-", "-", "-")
    rate = "-" if load.prefix_hit_rate is None else f"{100 * load.prefix_hit_rate:.0f}%"
    usage = "-" if engine.kv_cache_usage is None else f"{100 * engine.kv_cache_usage:.0f}%"
    return (f"{engine.running or 0:.0f}", f"{engine.waiting or 0:.0f}", usage, rate)


def _describe(sample: Sample) -> str:
    best = sorted(sample.answer.items(), key=lambda kv: -kv[1])[:3]
    shown = " ".join(f"{e.pod}#{e.dp_rank}:{n}" for e, n in best) or "no match"
    verdict = "agrees with ground truth" if sample.agrees else f"DIFFERS from truth {sample.truth}"
    adapter = f" lora={sample.lora_name}" if sample.lora_name else ""
    return f"sample {sample.query_blocks} blocks{adapter}: {shown} ({verdict})"


def _curl(url: str, fleet: Fleet) -> str:
    """A ready-to-paste query by text prompt: one pod is sent the prompt first (tokenized by
    the fleet's own tokenizer, as its engine's /tokenize does), so the answer is a hit."""
    assert fleet.tokenizer is not None  # noqa: S101  # the demo's fleet serves /tokenize
    tokens = fleet.tokenizer.encode(CURL_PROMPT)
    fleet.submit(fleet.ids[0], Request(prompt=tuple(tokens)))
    body = json.dumps({"model": fleet.model, "prompt": CURL_PROMPT})
    return f"curl -s {url}/v1/match -H 'content-type: application/json' -d '{body}'"


def _loop(demo: Demo, out: TextIO, *, live: Live | None, interrupted: threading.Event) -> None:
    options = demo.options
    end = None if options.duration is None else demo.started + options.duration
    next_sample = demo.started + options.sample_seconds
    next_line = demo.started + 1.0
    while end is None or time.monotonic() < end:
        if interrupted.wait(0.25 if live is not None else 0.1):  # the view's refresh tick
            return
        now = time.monotonic()
        if now >= next_sample:
            found = demo.sample()
            next_sample = time.monotonic() + options.sample_seconds
            if live is None:
                out.write(_describe(found) + "\n" + demo.audit_line() + "\n")
        if live is not None:
            demo.measure()
            live.update(demo.view())
        elif now >= next_line:
            demo.measure()
            out.write(demo.plain_line() + "\n")
            out.flush()
            next_line = now + 2.0


def main(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """Run the demo; 0 when every sample agreed with the ground truth."""
    options = parser().parse_args(list(argv))
    if options.pods < 1 or (options.duration is not None and options.duration <= 0):
        sys.stderr.write("kvsync demo: --pods must be >= 1 and --duration > 0\n")
        return 2
    logs.configure(level="error", fmt="console", stream=sys.stderr)  # keep the view readable
    fleet = Fleet(pods=options.pods, dp_sizes=(1, 2, 1, 1), seed=options.seed, engine_http=True)
    with fleet:
        settings = Settings(
            discovery="static",
            endpoint=tuple(fleet.endpoints()),
            http_host="127.0.0.1",
            http_port=options.http_port,
            log_level="warning",
        )
        try:
            daemon = Daemon(settings)
        except KvsyncError as exc:
            sys.stderr.write(f"kvsync demo: {exc}\n")
            return 2
        daemon.start()
        demo = Demo(options, fleet, daemon)
        # Ctrl-C ends the loop between two steps: a KeyboardInterrupt raised anywhere (inside
        # a sample's flush, say) could leave the fleet half stopped and the exit waiting on it.
        interrupted = threading.Event()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
        try:
            fleet.wait_for_subscribers()
            fleet.step(20)
            out.write(f"kvsync HTTP API on {daemon.url} (metrics: {daemon.url}/metrics)\n")
            out.write(f"try: {_curl(daemon.url, fleet)}\n")
            out.flush()
            fleet.start(requests_per_s=options.rate)
            if out.isatty():
                with Live(demo.view(), console=Console(file=out), refresh_per_second=4) as live:
                    _loop(demo, out, live=live, interrupted=interrupted)
            else:
                _loop(demo, out, live=None, interrupted=interrupted)
            if interrupted.is_set():
                out.write("\n")
        except KeyboardInterrupt:  # before the handler was in place
            out.write("\n")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            fleet.stop()
            daemon.stop(settings.stop_timeout_seconds)
    agreed = sum(s.agrees for s in demo.samples)
    disagreed = len(demo.samples) - agreed
    audit = demo.audit
    out.write(
        f"summary samples={len(demo.samples)} agreed={agreed} disagreed={disagreed} "
        f"endpoints={len(fleet.ids)} seconds={time.monotonic() - demo.started:.1f} "
        f"audited={sum(audit.values())} exact={audit['exact']} over={audit['over']} "
        f"under={audit['under']}\n"
    )
    return 0 if disagreed == 0 and demo.audit_exact else 1
