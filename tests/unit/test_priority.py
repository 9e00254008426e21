"""kvsync.priority: the ingest thread hands the GIL over only while requests are arriving."""

import asyncio
import time

import pytest
from starlette.types import Message, Receive, Scope, Send

from kvsync import priority


def sleeps_after_batch(monkeypatch: pytest.MonkeyPatch, lookups: priority.LookupsFirst) -> int:
    calls: list[float] = []
    monkeypatch.setattr(time, "sleep", calls.append)
    lookups.after_batch()
    return len(calls)


def serve(lookups: priority.LookupsFirst) -> Scope:
    """One request through the wrapped app; returns its scope."""
    scope: Scope = {"type": "http"}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["served"] = True

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        return None

    async def request() -> None:
        await lookups.wrap(app)(scope, receive, send)

    asyncio.run(request())
    return scope


def test_no_request_no_yield(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sleeps_after_batch(monkeypatch, priority.LookupsFirst()) == 0


def test_a_recent_request_makes_ingest_yield_and_the_request_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookups = priority.LookupsFirst()
    assert serve(lookups)["served"]
    assert sleeps_after_batch(monkeypatch, lookups) == 1


def test_an_old_request_no_longer_makes_ingest_yield(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = priority.LookupsFirst()
    later = time.monotonic() + priority.RECENT_S + 60
    serve(lookups)
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert sleeps_after_batch(monkeypatch, lookups) == 0
