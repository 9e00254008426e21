"""What the HTTP side sees of the daemon's endpoints: plain values the runtime fills. Pure.

``http`` may not import ``ingest`` or ``discovery``; the runtime turns an ingest snapshot into
``EndpointView``s (``kvsync.daemon.runtime.endpoint_views``) and hands the API a callable that
returns them. Read per tokenize miss, hint, explain and ``/workers``, never per lookup.
"""

from dataclasses import dataclass

from kvsync.model import EndpointId


@dataclass(frozen=True, slots=True)
class EndpointView:
    """One subscribed endpoint."""

    id: EndpointId
    model: str
    pub: str
    replay: str | None
    engine: str | None  # http://host:port of its pod's vLLM server, if known
    state: str  # connecting, replaying, live, reset
    last_seq: int | None
    last_event_age_s: float | None
    resets: tuple[tuple[float, str], ...] = ()  # the latest resets: (wall-clock s, reason)
