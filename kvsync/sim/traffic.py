"""A background thread that calls a step function at a steady rate. I/O edge (a thread).

``Traffic(step, requests_per_s=…)`` calls ``step()`` (which runs one request and returns the
blocks it stored) at that many calls per second; with ``blocks_per_s=…`` it paces by the blocks
each call reports instead. Pacing uses ``time.monotonic()`` deadlines; after a stall it resumes
the rate rather than bursting to catch up (it never owes more than one second).

Owned by the thread that built it: ``start()`` once, ``stop()`` joins within a bound and
re-raises (as ``SimError``) whatever made ``step`` fail. Not a daemon thread.
"""

import threading
import time
from collections.abc import Callable
from typing import Final

from kvsync.sim.records import SimError

_MAX_DEBT_S: Final = 1.0


class Traffic:
    """Calls ``step`` at ``requests_per_s`` calls/s, or at ``blocks_per_s`` stored blocks/s."""

    def __init__(
        self,
        step: Callable[[], int],
        *,
        requests_per_s: float | None = None,
        blocks_per_s: float | None = None,
        name: str = "sim-fleet-traffic",
    ) -> None:
        rates = [r for r in (requests_per_s, blocks_per_s) if r is not None]
        if len(rates) != 1 or rates[0] <= 0:
            raise SimError("give exactly one positive rate: requests_per_s or blocks_per_s")
        self._step = step
        self._requests_per_s = requests_per_s
        self._blocks_per_s = blocks_per_s
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._drive, name=name)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and join; raise ``SimError`` if the thread is stuck or ``step`` failed."""
        self._stopping.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise SimError(f"{self._thread.name} did not stop within {timeout} s")
        if self._failure is not None:
            raise SimError(f"traffic failed: {self._failure!r}") from self._failure

    def _drive(self) -> None:
        due = time.monotonic()
        try:
            while not self._stopping.wait(max(0.0, due - time.monotonic())):
                stored = self._step()
                if self._requests_per_s:
                    cost = 1 / self._requests_per_s
                else:
                    cost = stored / (self._blocks_per_s or 1)
                due = max(due + cost, time.monotonic() - _MAX_DEBT_S)
        except Exception as exc:  # noqa: BLE001  # thread guard: re-raised by stop()
            self._failure = exc
