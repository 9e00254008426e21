"""Shared pieces of the ingest tests: a running manager, settling, and the ground-truth check.

The oracle is the simulator's ground truth (what each engine's cache holds, from token
prefixes), compared with the daemon's index answers for a battery of router queries.

The index backend is the memory one unless a test module runs with the ``index_backend``
fixture (tests/integration/conftest.py), which runs each of its tests once per backend: the
Redis one on the real test cluster too. A test that hands ``running_daemon`` its own
``PrefixIndex`` is about the memory backend and runs on it alone.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kvsync.index.backend import IndexBackend
from kvsync.index.memory.backend import MemoryBackend
from kvsync.index.memory.index import PrefixIndex
from kvsync.index.values import Query
from kvsync.ingest.manager import SubscriberManager
from kvsync.ingest.values import EndpointStats, IngestSettings, ReplaySettings
from kvsync.model import EndpointId
from kvsync.sim import Fleet, SimQuery

SETTLE_S = 20.0


# What running_daemon opens when a test gives no index: set by the index_backend fixture.
backend_factory: Callable[[], IndexBackend] | None = None


@dataclass
class Daemon:
    manager: SubscriberManager
    backend: IndexBackend
    index: PrefixIndex | None  # the memory backend's (None on another backend)
    lock: "threading.Lock | None"

    def endpoint(self, endpoint_id: EndpointId) -> EndpointStats | None:
        for stats in self.manager.snapshot().endpoints:
            if stats.endpoint.id == endpoint_id:
                return stats
        return None

    def answer(self, query: SimQuery, pods: frozenset[str] | None = None) -> dict[EndpointId, int]:
        assert self.backend.flush()  # a shared backend's writes go out a moment after ingest
        result = self.backend.match(
            Query(
                model=query.model,
                token_ids=query.token_ids,
                lora_name=query.lora_name,
                lora_id=query.lora_id,
                cache_salt=query.cache_salt,
                pods=pods,
            ),
            time.time(),
        )
        return {m.endpoint: m.matched_blocks for m in result.matches}


@contextmanager
def running_daemon(
    *,
    replay_timeout_s: float = 5.0,
    replay_cooldown_s: float = 30.0,
    poll_ms: int = 100,
    on_lag: Callable[[float], None] | None = None,
    index: PrefixIndex | None = None,
    expect_failure: bool = False,
    sweep_interval_s: float = 60.0,
) -> Iterator[Daemon]:
    backend: IndexBackend
    lock: threading.Lock | None = None
    if index is not None or backend_factory is None:
        memory = MemoryBackend(index or PrefixIndex())
        backend, index, lock = memory, memory.index, memory.lock
    else:
        backend = backend_factory()
    handler = ReplaySettings(replay_timeout_s=replay_timeout_s, replay_cooldown_s=replay_cooldown_s)
    manager = SubscriberManager(
        backend,
        settings=IngestSettings(
            handler=handler, poll_ms=poll_ms, sweep_interval_s=sweep_interval_s
        ),
        on_lag=on_lag,
    )
    manager.start()
    try:
        yield Daemon(manager, backend, index, lock)
    finally:
        assert manager.stop(timeout_s=5.0)
        assert backend.close()
        assert manager.failed.is_set() == expect_failure


def eventually(check: Callable[[], bool], timeout: float = SETTLE_S, what: str = "") -> None:
    """Poll ``check`` until it holds or the deadline passes (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled within {timeout} s: {what}")
        time.sleep(0.01)


def caught_up(daemon: Daemon, fleet: Fleet, ids: list[EndpointId] | None = None) -> bool:
    """Every endpoint has applied its publisher's last seq and is not replaying."""
    stats = {s.endpoint.id: s for s in daemon.manager.snapshot().endpoints}
    for endpoint_id in ids if ids is not None else fleet.ids:
        next_seq = fleet.publisher(endpoint_id).stats.next_seq
        got = stats.get(endpoint_id)
        if got is None or got.state == "replaying":
            return False
        if got.last_seq != (next_seq - 1 if next_seq else None):
            return False
    return True


def settle(daemon: Daemon, fleet: Fleet, ids: list[EndpointId] | None = None) -> None:
    fleet.flush()
    eventually(lambda: caught_up(daemon, fleet, ids), what="ingest caught up with the fleet")


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    queries: int
    hits: int  # (query, endpoint) pairs with matched blocks in the truth


def score(
    daemon: Daemon,
    fleet: Fleet,
    queries: int = 150,
    remap: Callable[[EndpointId], EndpointId | None] = lambda e: e,
) -> Score:
    """Precision and recall of matched blocks over (query, endpoint) pairs, against the truth.

    ``remap`` renames the truth's endpoints to the daemon's (for an endpoint that moved), or
    leaves one out (None).
    """
    claimed = true = agreed = hits = 0
    for _ in range(queries):
        query = fleet.sample_query()
        renamed = ((remap(e), n) for e, n in fleet.ground_truth(query).items())
        truth = {e: n for e, n in renamed if e is not None}
        answer = daemon.answer(query)
        hits += len(truth)
        for endpoint in truth.keys() | answer.keys():
            got, want = answer.get(endpoint, 0), truth.get(endpoint, 0)
            claimed += got
            true += want
            agreed += min(got, want)
    precision = agreed / claimed if claimed else 1.0
    recall = agreed / true if true else 1.0
    return Score(precision, recall, queries, hits)
