"""What every discovery source shares, pure: the ``Source`` and ``Sink`` protocols, the diff.

A source (``kvsync.discovery.static``, ``kvsync.discovery.kubernetes``) turns what it watches
into the desired set of endpoints, and hands the difference to a ``Sink`` (the ingest manager's
face) as commands. No I/O, no clock, no logging here; nothing raises.

- ``Source``: what the runtime holds, whichever source was picked (``--discovery``): ``start()``,
  ``synced`` (the initial set has been sent: ``/readyz``), ``request_reload()`` (SIGHUP),
  ``last_error()``, ``stop(timeout_seconds)``.
- ``diff(current, desired)`` lists the commands that turn one endpoint set into the other;
  ``EndpointTable`` keeps source key → endpoints (a pod, or the static file) and diffs each
  change; ``send`` hands commands to a ``Sink``.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from kvsync.model import Endpoint, EndpointId


class Flag(Protocol):
    """A set-once flag another thread waits for (``threading.Event`` is one)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Source(Protocol):
    """A discovery source: sends the desired endpoints to its ``Sink`` from its own thread."""

    @property
    def synced(self) -> Flag:
        """Set once the initial endpoint set has been sent."""
        ...

    def start(self) -> None:
        """Send the initial set, then follow changes; returns at once."""
        ...

    def request_reload(self) -> None:
        """Re-read what the source reads (SIGHUP); a source that follows changes ignores it."""
        ...

    def last_error(self) -> str | None:
        """The last problem met (for logs and tests), if any."""
        ...

    def stop(self, timeout_seconds: float = 1.0) -> bool:
        """Stop following; True if its thread ended within ``timeout_seconds``."""
        ...


@dataclass(frozen=True, slots=True)
class SetEndpoint:
    """Subscribe to this endpoint, or replace it if its id is known with other fields (purge)."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class RemoveEndpoint:
    """Unsubscribe and purge this endpoint's blocks."""

    id: EndpointId


Command = SetEndpoint | RemoveEndpoint


def diff(current: Iterable[Endpoint], desired: Iterable[Endpoint]) -> list[Command]:
    """Commands that turn ``current`` into ``desired``: removals first, then sets; unchanged: none.

    Sorted by id, so the same change gives the same commands. Ids are unique within each input.
    """
    have = {e.id: e for e in current}
    want = {e.id: e for e in desired}
    removes: list[Command] = [RemoveEndpoint(i) for i in sorted(have.keys() - want.keys())]
    sets: list[Command] = [SetEndpoint(want[i]) for i in sorted(want) if have.get(i) != want[i]]
    return removes + sets


class EndpointTable:
    """Which endpoints each source (a pod key, or the static file) currently contributes.

    Every mutation returns the commands for the subscriber manager. Not thread-safe: one owner.
    """

    def __init__(self) -> None:
        self._by_source: dict[str, tuple[Endpoint, ...]] = {}

    def put(self, source: str, endpoints: Iterable[Endpoint]) -> list[Command]:
        """``source`` now contributes exactly ``endpoints`` (none: forget it)."""
        new = tuple(endpoints)
        old = self._by_source.pop(source, ())
        if new:
            self._by_source[source] = new
        return diff(old, new)

    def replace_all(self, sources: Mapping[str, Iterable[Endpoint]]) -> list[Command]:
        """The complete state after a re-list: unchanged sources give no command."""
        old = self.endpoints()
        self._by_source = {s: tuple(e) for s, e in sources.items() if e}
        return diff(old, self.endpoints())

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint currently wanted."""
        return [e for group in self._by_source.values() for e in group]

    def sources(self) -> list[str]:
        """Every source that contributes at least one endpoint."""
        return list(self._by_source)


class Sink(Protocol):
    """Where endpoint commands go (the subscriber manager); both calls must return at once."""

    def set_endpoint(self, endpoint: Endpoint) -> None: ...

    def remove_endpoint(self, endpoint_id: EndpointId) -> None: ...


class Tee:
    """A ``Sink`` handing every command to each of its sinks in turn (ingest, the load table)."""

    def __init__(self, *sinks: Sink) -> None:
        self._sinks = sinks

    def set_endpoint(self, endpoint: Endpoint) -> None:
        for sink in self._sinks:
            sink.set_endpoint(endpoint)

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        for sink in self._sinks:
            sink.remove_endpoint(endpoint_id)


def send(sink: Sink, commands: list[Command]) -> None:
    """Hand each command to the sink, in order (removals first, as ``diff`` sorts them)."""
    for command in commands:
        match command:
            case SetEndpoint(endpoint=endpoint):
                sink.set_endpoint(endpoint)
            case RemoveEndpoint(id=endpoint_id):
                sink.remove_endpoint(endpoint_id)
