"""``--index-backend redis``: the prefix index in Redis Cluster (or one Redis), shared by replicas.

Writes: each replica owns the endpoints its shard subscribes to. ``apply`` runs on the ingest
thread against the owned endpoint's in-process state (``shadow``) and returns at once; a flusher
thread sends what changed, one ``kvsync_apply`` call per endpoint per flush (every batch since
the last one, merged: atomic with its ``seq``), all endpoints in one pipeline. While Redis is
unreachable the changes wait (bounded by what the endpoints hold) and are retried with backoff;
``health()`` says why, ``/readyz`` turns 503, lookups raise ``IndexUnavailableError``.

Ownership and restarts: ``resume(endpoint, ident)`` claims the endpoint (its generation goes up:
a previous writer's calls are refused from then on, and it stops writing that endpoint) and, when
the stored incarnation is this one, reads its blocks back and returns the stored ``seq``: the
sequencer replays from the next one instead of from 0. An endpoint written without a resume is
claimed by the flusher before its first write, and what was stored for it is dropped (the writer
does not know it). After a failover that lost the tail of an endpoint's writes (asynchronous
replication), the stored ``seq`` is behind what this writer wrote: the writer rewrites the
endpoint whole from its own state, in one call, so answers are true again without depending on
the publisher's replay buffer.

Leases: every write, and a renewal every few seconds, keep an owned endpoint's lease ahead;
lookups skip endpoints whose lease has passed (an owner that crashed, or a pod deleted while its
owner was down: nobody follows their events any more), and ``close`` releases them at once.

Reads: ``match`` (``reader``) from any replica, owned endpoints or not.
"""

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from kvsync.errors import IndexUnavailableError
from kvsync.index.backend import BackendSettings
from kvsync.index.redis import layout
from kvsync.index.redis.connection import Nodes, open_nodes, unavailable
from kvsync.index.redis.reader import Reader
from kvsync.index.redis.shadow import EndpointShadow, Pending
from kvsync.index.values import (
    ANY_MEDIUM,
    OTHER_MEDIUM_WEIGHT,
    ApplyOutcome,
    EndpointContext,
    IndexStats,
    MatchResult,
    Query,
)
from kvsync.model import EndpointId, Event

log = structlog.get_logger()

_BACKOFF_S: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_SCAN_COUNT: Final = 10_000
# Lookups skip an endpoint whose lease (15 s, ``functions``) has passed; every write renews it,
# and the flusher renews the quiet ones this often.
_RENEW_S: Final = 3.0
_RESUME_RETRY_S: Final = (0.2, 1.0)  # then give up: the endpoint starts from seq 0
# Copies vLLM publishes: the GPU pool and CPU offload, for the first KV-cache groups of hybrid
# models. Their bits are taken at open, so ingest meets a new one (a Redis call) only rarely.
_USUAL_COPIES: Final = tuple((medium, group) for group in range(4) for medium in ("GPU", "CPU"))


@dataclass(slots=True)
class Owned:
    """An endpoint this replica writes: its state and where Redis stands."""

    endpoint: EndpointId
    shadow: EndpointShadow
    ident: str = ""
    gen: bytes | None = None  # None: not claimed yet (the flusher claims it, dropping the old)
    acked: int | None = None  # the seq Redis has confirmed for it
    fenced: bool = False  # another writer claimed it: this one no longer writes it
    tag: str = field(init=False)  # the endpoint's hash tag (``layout``), computed once
    meta: str = field(init=False)

    def __post_init__(self) -> None:
        self.tag = layout.endpoint_tag(self.endpoint)
        self.meta = layout.meta_key(self.tag)


class RedisBackend:
    """The ``IndexBackend`` on Redis; see the module docstring."""

    def __init__(self, nodes: Nodes, settings: BackendSettings) -> None:
        self._nodes = nodes
        self._limits = settings.limits
        weights = settings.medium_weights
        self._reader = Reader(
            nodes,
            weights={m: w for m, w in weights.items() if m != ANY_MEDIUM},
            other_weight=weights.get(ANY_MEDIUM, OTHER_MEDIUM_WEIGHT),
            default_block_size=settings.default_block_size,
        )
        self._lock = threading.Lock()  # the owned endpoints, between ingest and the flusher
        self._wake = threading.Condition(self._lock)
        self._owned: dict[EndpointId, Owned] = {}
        self._dirty: set[EndpointId] = set()
        self._copy_bits: dict[tuple[str, int], int] = {}
        self._error: str | None = None
        self._stopping = False
        self._flushing = False
        self._renewed_at = time.monotonic()
        for medium, group in _USUAL_COPIES:  # raises IndexUnavailableError, as open_nodes
            self._copy_bit(medium, group)
        self._thread = threading.Thread(target=self._flush_loop, name="kvsync-redis", daemon=True)
        self._thread.start()

    # -- the IndexBackend surface -------------------------------------------------------------

    def apply(
        self,
        endpoint: EndpointId,
        context: EndpointContext,
        events: Sequence[Event],
        now: float,
        seq: int | None = None,
    ) -> ApplyOutcome:
        del now  # idle expiry is the memory backend's (see ``shadow``)
        out = ApplyOutcome()
        with self._lock:
            owned = self._own(endpoint)
            owned.shadow.apply(context, events, out)
            if seq is not None:
                owned.shadow.seq = seq
            self._dirty.add(endpoint)
            self._wake.notify()
        return out

    def drop_endpoint(self, endpoint: EndpointId) -> int:
        with self._lock:
            owned = self._owned.get(endpoint)
            if owned is None:
                return 0
            dropped = owned.shadow.clear()
            owned.shadow.seq = None
            owned.shadow.pending.rewrite = True  # whatever Redis holds for it goes
            self._dirty.add(endpoint)
            self._wake.notify()
        return dropped

    def expire(self, now: float) -> Mapping[str, int]:
        del now
        return {}

    def match(self, query: Query, now: float) -> MatchResult:
        del now
        return self._reader.match(query)

    def blocks_held(self, endpoint: EndpointId) -> int:
        with self._lock:
            owned = self._owned.get(endpoint)
            return 0 if owned is None else owned.shadow.blocks_held()

    def stats(self) -> IndexStats:
        with self._lock:
            blocks = {e: o.shadow.blocks_held() for e, o in self._owned.items()}
            contexts = sum(len(o.shadow.contexts) for o in self._owned.values())
        total = sum(blocks.values())
        return IndexStats(
            endpoints=len(blocks), contexts=contexts, keys=total, entries=total, blocks=blocks
        )

    def resume(self, endpoint: EndpointId, ident: str) -> int | None:
        """Claim ``endpoint`` for this writer; the stored seq when its blocks are this
        incarnation's (now loaded), else None. Blocks while it reads them back."""
        with self._lock:
            unflushed = endpoint in self._dirty
        if unflushed:  # a drop of its previous subscription must be in before the claim
            self.flush()
        claimed = self._claim_retrying(endpoint, ident)
        if claimed is None:  # the flusher claims it afresh before its first write
            with self._lock:
                self._owned[endpoint] = Owned(
                    endpoint, EndpointShadow(self._limits, self._copy_bit), ident
                )
            return None
        owned, seq = claimed
        shadow = owned.shadow
        stored = int(seq) if seq else None
        shadow.seq = owned.acked = stored
        with self._lock:
            self._owned[endpoint] = owned
        return stored

    def _claim_retrying(self, endpoint: EndpointId, ident: str) -> tuple[Owned, bytes] | None:
        """``_claim``, tried again after a failure: a blip at start-up must not cost the
        endpoint its history. None once every try failed."""
        for delay in (*_RESUME_RETRY_S, None):
            try:
                return self._claim(endpoint, ident)
            except IndexUnavailableError as exc:
                log.warning(
                    "redis_resume_failed",
                    pod=endpoint.pod,
                    rank=endpoint.dp_rank,
                    error=str(exc),
                    retry_in_s=delay,
                )
                if delay is not None:
                    time.sleep(delay)
        return None

    def _claim(self, endpoint: EndpointId, ident: str) -> tuple[Owned, bytes]:
        """Claim ``endpoint`` and read its stored blocks back: (its state, the stored seq)."""
        owned = Owned(endpoint, EndpointShadow(self._limits, self._copy_bit), ident)
        client = self._nodes.client
        gen, seq, ctxs = self._nodes.guarded(
            lambda: client.fcall("kvsync_claim", 1, owned.meta, ident)
        )
        owned.gen = str(gen).encode()
        for context_tag in ctxs.decode().split():
            entries = self._read_hash(layout.data_key(owned.tag, context_tag))
            context = layout.context_from_tag(context_tag)
            owned.shadow.load(context, (layout.unpack_entry(f, v) for f, v in entries))
        return owned, seq

    def _read_hash(self, key: str) -> list[tuple[bytes, bytes]]:
        client = self._nodes.client
        return self._nodes.guarded(lambda: list(client.hscan_iter(key, count=_SCAN_COUNT)))

    def health(self) -> str | None:
        """None when writes and reads go through; else why not."""
        return self._error

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every change made so far is in Redis (tests, shutdown); True if it is."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._wake.notify()
            while self._dirty or self._flushing:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Flush, then release the owned endpoints' leases: from now on nobody follows them,
        so lookups skip them until a writer resumes them."""
        flushed = self.flush(timeout_s)
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        self._thread.join(timeout_s)
        with self._lock:
            owned = [o for o in self._owned.values() if o.gen is not None and not o.fenced]
        if owned:
            pipe = self._nodes.client.pipeline(transaction=False)
            for o in owned:
                pipe.fcall("kvsync_release", 1, o.meta, o.gen)
            try:
                self._nodes.guarded(lambda: pipe.execute(raise_on_error=False))
            except IndexUnavailableError as exc:  # their leases run out by themselves
                log.warning("redis_release_failed", error=str(exc), endpoints=len(owned))
        self._nodes.close()
        return flushed

    # -- ingest thread helpers (under the lock) ----------------------------------------------

    def _own(self, endpoint: EndpointId) -> Owned:
        owned = self._owned.get(endpoint)
        if owned is None:
            owned = self._owned[endpoint] = Owned(
                endpoint, EndpointShadow(self._limits, self._copy_bit)
            )
        return owned

    def _copy_bit(self, medium: str, group: int) -> int:
        bit = self._copy_bits.get((medium, group))
        if bit is None:
            field_name = layout.copy_field(medium, group)
            client = self._nodes.client
            # Rare (a copy kind first met; the usual ones are taken at open) and blocking: the
            # bit must be the same in every process.
            bit = int(
                self._nodes.guarded(
                    lambda: client.fcall("kvsync_copy_bit", 1, layout.COPIES_KEY, field_name)
                )
            )
            self._copy_bits[(medium, group)] = bit
        return bit

    # -- the flusher thread -----------------------------------------------------------------

    def _flush_loop(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._dirty and not self._stopping:
                    due = self._renewed_at + _RENEW_S - time.monotonic()
                    if due <= 0:  # the leases: every owned endpoint, changed or not
                        self._renewed_at = time.monotonic()
                        self._dirty.update(self._owned)
                    else:
                        self._wake.wait(due)
                if self._stopping:
                    return
                work = self._take()
                self._flushing = True
            try:
                self._send(work)
                failures = 0
                self._error = None
            except IndexUnavailableError as exc:
                failures += 1
                self._error = str(exc)
                with self._lock:
                    for owned, pending, *_ in work:
                        owned.shadow.pending = pending.under(owned.shadow.pending)
                        self._dirty.add(owned.endpoint)
                log.warning("redis_flush_failed", error=str(exc), endpoints=len(work))
                delay = _BACKOFF_S[min(failures, len(_BACKOFF_S)) - 1]
                with self._lock:
                    self._flushing = False
                    self._wake.notify_all()
                    self._wake.wait(delay)
                continue
            except Exception:  # the thread boundary: never die, keep the changes
                log.exception("redis_flush_crashed")
                with self._lock:
                    for owned, pending, *_ in work:
                        owned.shadow.pending = pending.under(owned.shadow.pending)
                        self._dirty.add(owned.endpoint)
            with self._lock:
                self._flushing = False
                self._wake.notify_all()

    def _take(self) -> list[tuple[Owned, Pending, int | None, int, str]]:
        work = []
        for endpoint in self._dirty:
            owned = self._owned.get(endpoint)
            if owned is None or owned.fenced:
                continue
            shadow = owned.shadow
            work.append(
                (
                    owned,
                    shadow.take_pending(),
                    shadow.seq,
                    shadow.blocks_held(),
                    shadow.context_tags(),
                )
            )
        self._dirty.clear()
        return work

    def _send(self, work: list[tuple[Owned, Pending, int | None, int, str]]) -> None:
        nodes = self._nodes
        for owned, pending, *_ in work:
            if owned.gen is None:
                self._claim_fresh(owned, pending)
        pipe = nodes.client.pipeline(transaction=False)
        for owned, pending, seq, held, ctxs in work:
            tag = owned.tag
            ep_json = layout.endpoint_json(owned.endpoint)
            removed_registry = []
            for context_tag, present in pending.registry.items():
                model, adapter, bs = layout.context_from_tag(context_tag)
                key = layout.registry_key(model, adapter)
                if present:
                    pipe.hset(key, layout.registry_field(bs, tag), ep_json)
                else:
                    removed_registry.append((key, layout.registry_field(bs, tag)))
            data_keys, args = [], []
            for context_tag in sorted(pending.clear | set(pending.writes)):
                plain, other, dels = layout.pack_writes(pending.writes.get(context_tag, {}))
                data_keys.append(layout.data_key(tag, context_tag))
                args += ["1" if context_tag in pending.clear else "", plain, other, dels]
            expected = "*" if pending.rewrite else ("" if owned.acked is None else str(owned.acked))
            pipe.fcall(
                "kvsync_apply",
                1 + len(data_keys),
                owned.meta,
                *data_keys,
                owned.gen,
                expected,
                "" if seq is None else str(seq),
                held,
                ctxs,
                *args,
            )
            for key, registry_field in removed_registry:
                pipe.hdel(key, registry_field)
        replies = nodes.guarded(lambda: pipe.execute(raise_on_error=False))
        failed = None
        position = 0
        for owned, pending, seq, _, _ in work:
            n_adds = sum(1 for present in pending.registry.values() if present)
            n_commands = len(pending.registry) + 1  # registry adds, the apply, registry removals
            mine = replies[position : position + n_commands]
            position += n_commands
            errors = [r for r in mine if isinstance(r, Exception)]
            reply = mine[n_adds]
            if errors:
                failed = errors[0]
                with self._lock:
                    owned.shadow.pending = pending.under(owned.shadow.pending)
                    self._dirty.add(owned.endpoint)
                continue
            self._settle(owned, reply, seq)
        if failed is not None:
            nodes.recover(failed)
            raise unavailable(failed)

    def _settle(self, owned: Owned, reply: Any, seq: int | None) -> None:
        status = reply[0]
        if status == b"ok":
            owned.acked = seq
        elif status == b"fenced" and not reply[1]:
            # No metadata at all: Redis lost the keyspace (restarted empty, or a failover to a
            # replica that never had it). Claim the endpoint again and write it whole.
            log.warning("redis_endpoint_lost", pod=owned.endpoint.pod, rank=owned.endpoint.dp_rank)
            with self._lock:
                owned.gen = None
                owned.shadow.pending = owned.shadow.everything().under(owned.shadow.pending)
                self._dirty.add(owned.endpoint)
        elif status == b"fenced":
            owned.fenced = True
            log.warning(
                "redis_endpoint_fenced", pod=owned.endpoint.pod, rank=owned.endpoint.dp_rank
            )
        elif status == b"behind":
            log.warning(
                "redis_endpoint_rewritten",
                pod=owned.endpoint.pod,
                rank=owned.endpoint.dp_rank,
                stored_seq=reply[1].decode(),
                expected=owned.acked,
            )
            with self._lock:
                owned.shadow.pending = owned.shadow.everything().under(owned.shadow.pending)
                self._dirty.add(owned.endpoint)

    def _claim_fresh(self, owned: Owned, pending: Pending) -> None:
        """The first write of an endpoint nobody resumed: claim it with a new identity, so what
        an earlier incarnation left is dropped by the claim itself."""
        meta = owned.meta
        client = self._nodes.client
        ident = owned.ident or f"fresh:{time.time_ns()}"
        gen, _, _ = self._nodes.guarded(lambda: client.fcall("kvsync_claim", 1, meta, ident + "#"))
        owned.gen = str(gen).encode()
        owned.acked = None
        pending.rewrite = True


def open_redis(settings: BackendSettings) -> RedisBackend:
    """``--index-backend redis`` (the ``BACKENDS`` entry)."""
    return RedisBackend(open_nodes(settings.redis), settings)
