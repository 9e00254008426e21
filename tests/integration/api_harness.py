"""A real uvicorn server on 127.0.0.1 serving kvsync's API over a real PrefixIndex (test helper)."""

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from kvsync import metrics
from kvsync.audit.ledger import Audit
from kvsync.http import schemas, server
from kvsync.http.app import Api, ApiSettings, create_app
from kvsync.http.dynamo import DynamoApi
from kvsync.http.loads import NO_LOAD, LoadViews
from kvsync.index import values
from kvsync.index.memory import index
from kvsync.index.memory.backend import MemoryBackend
from kvsync.model import BlockStored, EndpointId, encode_tokens

MODEL = "llama"
BLOCK = 4


@dataclass
class FakeHealth:
    """Probe answers the test flips."""

    is_live: bool = True
    is_ready: bool = True
    reason: str = "stopping"

    def live(self) -> bool:
        return self.is_live

    def ready(self) -> bool:
        return self.is_ready

    def not_ready_reason(self) -> str:
        return self.reason


@dataclass
class Harness:
    url: str
    port: int
    index: index.PrefixIndex
    lock: threading.Lock
    health: FakeHealth
    ages: dict[EndpointId, float] = field(default_factory=dict)


def store(
    prefix_index: index.PrefixIndex,
    endpoint: EndpointId,
    tokens: Sequence[int],
    *,
    model: str = MODEL,
    medium: str = "GPU",
    lora_name: str | None = None,
    first_hash: int = 1,
    block_size: int = BLOCK,
) -> None:
    """``endpoint`` stores the full blocks of ``tokens`` as one chain from the root."""
    blocks = len(tokens) // block_size
    event = BlockStored(
        block_hashes=[first_hash + i for i in range(blocks)],
        parent_block_hash=None,
        token_ids=encode_tokens(tokens[: blocks * block_size]),
        block_size=block_size,
        medium=medium,
        lora_name=lora_name,
    )
    context = values.EndpointContext(model=model, lora_id=None)
    prefix_index.apply(endpoint, context, [event], time.time())  # the clock match() uses


def pod_status(endpoint: EndpointId, blocks: int) -> schemas.PodStatus:
    return schemas.PodStatus(
        pod=endpoint.pod,
        dp_rank=endpoint.dp_rank,
        model=MODEL,
        pub=f"tcp://127.0.0.1:{5557 + endpoint.dp_rank}",
        replay=None,
        state="live",
        last_seq=41,
        last_event_age_s=0.5,
        blocks=blocks,
        gaps=0,
        replays=1,
        resets=0,
        decode_errors=0,
        duplicates=0,
        reset_reasons={},
    )


@contextmanager
def running_api(
    prefix_index: index.PrefixIndex | None = None,
    *,
    token: str | None = None,
    max_body_bytes: int = 16 * 1024 * 1024,
    max_query_tokens: int = 1_000_000,
    body_timeout_s: float = 30.0,
    pods: Sequence[schemas.PodStatus] = (),
    snapshot: metrics.Snapshot | None = None,
    ages: Mapping[EndpointId, float] | None = None,
    load: LoadViews = NO_LOAD,
    audit: Audit | None = None,
) -> Iterator[Harness]:
    """Serve the API on a free port for the duration of the block; the server must stop."""
    used = index.PrefixIndex() if prefix_index is None else prefix_index
    backend = MemoryBackend(used, on_lock=metrics.observe_lock)
    lock = backend.lock
    health = FakeHealth()
    harness_ages = dict(ages or {})
    app = create_app(
        Api(
            reader=backend,
            pods=lambda: pods,
            event_age=harness_ages.get,
            health=health,
            registry=metrics.registry(None if snapshot is None else lambda: snapshot),
            settings=ApiSettings(
                max_body_bytes=max_body_bytes,
                max_query_tokens=max_query_tokens,
                api_token=token,
                body_timeout_s=body_timeout_s,
            ),
            dynamo=DynamoApi(
                reader=backend,
                endpoints=tuple,
                register=lambda _endpoint: None,
                unregister=lambda _endpoint: None,
                max_query_tokens=max_query_tokens,
            ),
            load=load,
            audit=audit,
        )
    )
    http = server.HttpServer(app, "127.0.0.1", 0)
    http.start()
    assert http.wait_started(), "uvicorn did not start"
    try:
        yield Harness(http.url, http.port, used, lock, health, harness_ages)
    finally:
        assert http.stop(5.0), "uvicorn did not stop within 5 s"
