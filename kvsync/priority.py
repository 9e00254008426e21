"""Lookups first: while HTTP requests are arriving, the ingest thread hands the GIL over after
every batch it applies. I/O edge (reads the clock, sleeps).

Why: one GIL carries both threads. A thread that wants the GIL while another runs Python code
waits up to the interpreter's switch interval (1 ms, ``kvsync.runtime``) for a forced hand-over,
and one HTTP request needs the GIL several times (read, parse, decode, look up, answer), so under
heavy ingest a lookup's p99 collected several of those waits. ``time.sleep(0)`` releases the GIL
and gives up the CPU for a moment (about 85 µs on Linux with the default timer slack), long enough
for a waiting thread to take the GIL; done after each batch, a request waits at most one batch.
It is only done while requests are arriving (one in the last ``RECENT_S``), so ingest alone pays
nothing; under lookups, ingest keeps up as long as batches arrive slower than one per ~0.1 ms.

Measured (BENCHMARKS.md, ``## API``): 500 rps of 8k-token lookups with 200k blocks/s of ingest,
p99 ~4 ms without, ~2 ms with.
"""

import math
import time
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

RECENT_S: Final = 0.005  # a request this recent means more are likely in flight


class LookupsFirst:
    """Shared by the HTTP server (``wrap``) and the ingest thread (``after_batch``)."""

    __slots__ = ("_last_request",)

    def __init__(self) -> None:
        # Written by the HTTP thread only, read by the ingest thread: a float store is atomic
        # under the GIL, and a stale read only delays one yield.
        self._last_request = -math.inf

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app``, noting the arrival time of every request."""

        async def noted(scope: Scope, receive: Receive, send: Send) -> None:
            self._last_request = time.monotonic()
            await app(scope, receive, send)

        return noted

    def after_batch(self) -> None:
        """Called by the ingest thread after each write, outside the index lock."""
        if time.monotonic() - self._last_request < RECENT_S:
            time.sleep(0)
