"""kvsync.discovery.kubernetes.watch without a server: watch lines in, commands out, nothing stops
the loop."""

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from kvsync.discovery.kubernetes.pods import PodDefaults
from kvsync.discovery.kubernetes.watch import (
    GoneError,
    InformerOptions,
    NamespaceWatch,
    WatchEventError,
    backoff_delay,
)
from kvsync.model import EndpointId
from tests.e2e.cluster import RecordingSink

pytestmark = pytest.mark.integration

MODEL = "model.aibrix.ai/name"


def new_watch(sink: RecordingSink) -> NamespaceWatch:
    # The API object is never called here: _apply_line is the event handling alone.
    api = client.CoreV1Api(client.ApiClient())
    return NamespaceWatch(api, sink, "ns", InformerOptions(defaults=PodDefaults()), lambda _: None)


def pod(name: str, ip: str | None, rv: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": name, "uid": f"u-{name}",
                     "resourceVersion": rv, "labels": {MODEL: "m", **labels}},
        "status": {"podIP": ip, "phase": "Running"},
    }  # fmt: skip


def line(kind: str, obj: object) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def test_events_and_bookmarks_move_the_resource_version_and_send_commands() -> None:
    sink = RecordingSink()
    watch = new_watch(sink)
    rv = watch._apply_line(line("ADDED", pod("a", None, "10")), "5")  # no IP yet: nothing
    assert (rv, sink.commands()) == ("10", [])
    rv = watch._apply_line(line("MODIFIED", pod("a", "10.0.0.1", "11")), rv)
    rv = watch._apply_line(line("BOOKMARK", {"metadata": {"resourceVersion": "15"}}), rv)
    rv = watch._apply_line(line("MODIFIED", pod("a", "10.0.0.1", "16")), rv)  # unchanged
    rv = watch._apply_line(line("DELETED", pod("a", "10.0.0.1", "17")), rv)
    assert rv == "17"
    assert sink.commands() == [("set", EndpointId("ns/a", 0)), ("remove", EndpointId("ns/a", 0))]
    assert watch.stats.skipped == {"no_ip": 1}


def test_error_events_raise_for_the_loop_and_garbage_is_counted() -> None:
    watch = new_watch(RecordingSink())
    with pytest.raises(GoneError):
        watch._apply_line(line("ERROR", {"kind": "Status", "code": 410, "message": "too old"}), "1")
    with pytest.raises(WatchEventError):
        watch._apply_line(line("ERROR", {"kind": "Status", "code": 500}), "1")
    assert watch._apply_line(b"{not json", "7") == "7"
    assert watch._apply_line(b'{"type": "ADDED"}', "7") == "7"
    assert watch.stats.errors == {"malformed_event": 2}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=8,
)
_kinds = st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "WEIRD"])
_pods = st.builds(
    pod,
    name=st.sampled_from(["a", "b", "c"]),
    ip=st.none() | st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "bad"]),
    rv=st.integers(1, 99).map(str),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_kinds, _pods | _json) | st.binary(max_size=30), max_size=25))
def test_any_event_stream_keeps_the_sink_equal_to_the_table(
    events: list[tuple[str, object] | bytes],
) -> None:
    sink = RecordingSink()
    watch = new_watch(sink)
    for event in events:
        raw = event if isinstance(event, bytes) else line(*event)
        watch._apply_line(raw, "1")  # never raises for non-ERROR lines
    assert sink.snapshot() == {e.id: e for e in watch._table.endpoints()}


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, 0.5, 30.0, rng) for n in range(12)]
    assert all(0.25 <= d <= 30.0 for d in delays)
    assert delays[0] <= 0.5
    assert delays[-1] >= 15.0  # capped: [0.5, 1] x 30
    assert backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0
