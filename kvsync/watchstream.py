"""The Kubernetes pod watch stream as data: lines in, events and pod keys out. I/O helper.

``event_lines`` reads newline-delimited JSON events from a raw (not deserialised) ``urllib3``
response as the chunks arrive, in the caller's thread (a ``kvsync.podwatch`` loop); it raises
what the response's stream raises (``urllib3`` errors, ``OSError``). ``pod_key`` names a raw pod
object. ``raise_error_event`` turns an ERROR event into ``GoneError`` (410: re-list) or
``WatchEventError``; ``kvsync.podwatch`` handles both, so they never leave the watch loop.
"""

from collections.abc import Iterator
from typing import Final, NoReturn

import urllib3

from kvsync.errors import KvsyncError

GONE: Final = 410


class GoneError(KvsyncError):
    """410: the resourceVersion is too old; re-list. Never leaves ``kvsync.podwatch``."""


class WatchEventError(KvsyncError):
    """The stream carried an ERROR event other than 410. Never leaves ``kvsync.podwatch``."""


def raise_error_event(obj: object) -> NoReturn:
    """An ERROR event's object: 410 Gone means re-list, anything else a broken stream."""
    if isinstance(obj, dict) and obj.get("code") == GONE:
        raise GoneError(str(obj.get("message")))
    raise WatchEventError(f"watch ERROR event: {str(obj)[:200]}")


def pod_key(raw: object) -> str | None:
    """``namespace/name`` of a raw pod, if it has them (even when the rest is malformed)."""
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    if not isinstance(meta, dict):
        return None
    namespace, name = meta.get("namespace"), meta.get("name")
    if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
        return f"{namespace}/{name}"
    return None


def event_lines(response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """Newline-delimited JSON events as the chunks arrive (one event may span chunks)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending
