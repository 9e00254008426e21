"""Static discovery, I/O: ``--endpoint`` specs plus a followed ``--endpoints-file``, sent to a Sink.

I/O edge (reads the file; owns the ``static-discovery`` thread). Same face as
``kvsync.discovery.kubernetes.source.Informer``: ``start()``, ``synced``, ``stop()``, ``stats()``,
``last_error()``.

- ``start()`` sends the flag endpoints and the file's endpoints, sets ``synced``, then the thread
  re-reads the file when ``request_reload()`` is called (the runtime's SIGHUP handler; it only sets
  an event) or when the file's (mtime, size, inode) changes (checked every ``poll_seconds``).
- A re-read is diffed like informer events (``discovery.EndpointTable``): unchanged endpoints get
  no command, so their state is kept. A file that cannot be read or parsed, or that repeats a
  flag endpoint's name, keeps the previous endpoints and is counted and logged; never fatal
  after start. ``load_initial()`` raises ``ConfigError`` so a bad file fails start-up (exit 2).
"""

import os
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from kvsync.discovery.base import Command, EndpointTable, Sink, send
from kvsync.discovery.endpoints import DEFAULT_ENGINE_PORT, parse_endpoints_document
from kvsync.errors import ConfigError
from kvsync.model import Endpoint

log = structlog.get_logger(__name__)

FLAGS_SOURCE: Final = "flags"
FILE_SOURCE: Final = "file"


@dataclass(slots=True)
class StaticStats:
    """Plain counters, read by other threads."""

    reloads: int = 0  # successful re-reads that were applied (changed or not)
    errors: Counter[str] = field(default_factory=Counter)  # by reason: read, parse, conflict


def read_endpoints_file(
    path: str, flag_endpoints: Sequence[Endpoint], *, engine_port: int = DEFAULT_ENGINE_PORT
) -> list[Endpoint]:
    """The file's endpoints; ``ConfigError`` (one line) if unreadable, invalid or clashing.
    An entry without ``engine_port`` gets ``engine_port``."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--endpoints-file {path}: {exc}") from exc
    try:
        found = parse_endpoints_document(text, engine_port=engine_port)
    except ConfigError as exc:
        raise ConfigError(f"--endpoints-file {path}: {exc}") from exc
    flag_names = {e.id.pod for e in flag_endpoints}
    clash = sorted({e.id.pod for e in found} & flag_names)
    if clash:
        raise ConfigError(f"--endpoints-file {path}: {clash[0]!r} is also given by --endpoint")
    return found


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class StaticDiscovery:
    """Static endpoints for the daemon, with the endpoints file followed by one thread."""

    def __init__(
        self,
        sink: Sink,
        flag_endpoints: Sequence[Endpoint],
        path: str | None,
        *,
        engine_port: int = DEFAULT_ENGINE_PORT,
        poll_seconds: float = 1.0,
    ) -> None:
        self._sink, self._flags, self._path = sink, tuple(flag_endpoints), path
        self._engine_port = engine_port
        self._poll_seconds = poll_seconds
        self._table = EndpointTable()
        self._signature: tuple[int, int, int] | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._initial: list[Endpoint] = []
        self.synced = threading.Event()
        self._stats = StaticStats()
        self._error: str | None = None
        self.thread = threading.Thread(target=self._run, name="static-discovery")

    def load_initial(self) -> None:
        """Read the file once (start-up); raises ``ConfigError`` if it is unusable."""
        if self._path is not None:
            self._signature = _signature(self._path)
            self._initial = read_endpoints_file(
                self._path, self._flags, engine_port=self._engine_port
            )

    def start(self) -> None:
        """Send the initial endpoints, set ``synced`` and start following the file."""
        send(self._sink, self._table.put(FLAGS_SOURCE, self._flags))
        send(self._sink, self._table.put(FILE_SOURCE, self._initial))
        self.synced.set()
        if self._path is not None:
            self.thread.start()

    def request_reload(self) -> None:
        """Re-read the file soon (safe from a signal handler: it only sets an event)."""
        self._wake.set()

    def stop(self, timeout_seconds: float = 1.0) -> bool:
        """Stop following the file; True when the thread ended within the budget."""
        self._stopping.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout_seconds)
        return not self.thread.is_alive()

    def stats(self) -> StaticStats:
        """Counters of re-reads and rejected files."""
        return self._stats

    def last_error(self) -> str | None:
        """Why the last re-read was rejected (None once one succeeds)."""
        return self._error

    def _run(self) -> None:
        path = self._path
        while path is not None and not self._stopping.is_set():
            requested = self._wake.wait(self._poll_seconds)
            self._wake.clear()
            if self._stopping.is_set():
                break
            signature = _signature(path)
            if requested or signature != self._signature:
                self._signature = signature
                self.reload()

    def reload(self) -> list[Command]:
        """Re-read the file and send what changed; on error keep the previous endpoints."""
        if self._path is None:
            return []  # flags only: nothing to re-read
        try:
            found = read_endpoints_file(self._path, self._flags, engine_port=self._engine_port)
        except ConfigError as exc:
            reason = "conflict" if "also given by" in str(exc) else "invalid"
            self._stats.errors[reason] += 1
            self._error = str(exc)
            log.error("endpoints_file_rejected", path=self._path, error=str(exc))
            return []
        except Exception:  # the thread boundary: never let a reload kill discovery
            self._stats.errors["crash"] += 1
            log.exception("endpoints_file_crashed", path=self._path)
            return []
        commands = self._table.put(FILE_SOURCE, found)
        send(self._sink, commands)
        self._stats.reloads += 1
        self._error = None
        log.info("endpoints_file_reloaded", path=self._path, endpoints=len(found),
                 changes=len(commands))  # fmt: skip
        return commands
