"""kvsync.discovery.static: flag endpoints plus an endpoints file, re-read on request or change."""

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvsync.discovery.endpoints import parse_endpoint_spec
from kvsync.discovery.static import StaticDiscovery
from kvsync.errors import ConfigError
from kvsync.model import Endpoint, EndpointId

pytestmark = pytest.mark.integration


class RecordingSink:
    """The subscriber manager's face: records set/remove commands in order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commands: list[tuple[str, object]] = []
        self.endpoints: dict[EndpointId, Endpoint] = {}

    def set_endpoint(self, endpoint: Endpoint) -> None:
        with self.lock:
            self.commands.append(("set", endpoint.id))
            self.endpoints[endpoint.id] = endpoint

    def remove_endpoint(self, endpoint_id: EndpointId) -> None:
        with self.lock:
            self.commands.append(("remove", endpoint_id))
            self.endpoints.pop(endpoint_id, None)

    def take(self) -> list[tuple[str, object]]:
        with self.lock:
            taken, self.commands = self.commands, []
        return taken


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.02)


FLAG = parse_endpoint_spec("name=flagged,model=m,pub=tcp://127.0.0.1:6000")
A = "- {name: a, model: m, pub: 'tcp://127.0.0.1:5557', dp_size: 2}\n"
B = "- {name: b, model: m, pub: 'tcp://127.0.0.1:5600'}\n"


@pytest.fixture(name="endpoints_file")
def _endpoints_file(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints.yaml"
    path.write_text(A + B)
    return path


@pytest.fixture(name="running")
def _running(endpoints_file: Path) -> Iterator[tuple[StaticDiscovery, RecordingSink]]:
    sink = RecordingSink()
    static = StaticDiscovery(sink, FLAG, str(endpoints_file), poll_seconds=0.05)
    static.load_initial()
    static.start()
    yield static, sink
    assert static.stop(timeout_seconds=5)


def test_start_sends_flag_and_file_endpoints_and_is_synced(
    running: tuple[StaticDiscovery, RecordingSink],
) -> None:
    static, sink = running
    assert static.synced.is_set()
    assert sorted(sink.endpoints) == [
        EndpointId("a", 0),
        EndpointId("a", 1),
        EndpointId("b", 0),
        EndpointId("flagged", 0),
    ]


def test_reload_sends_only_the_difference(
    running: tuple[StaticDiscovery, RecordingSink], endpoints_file: Path
) -> None:
    static, sink = running
    sink.take()
    moved_b = "- {name: b, model: m, pub: 'tcp://127.0.0.1:5700'}\n"
    new_c = "- {name: c, model: m, pub: 'tcp://127.0.0.1:5800'}\n"
    endpoints_file.write_text(moved_b + new_c)  # a gone, b moved, c new
    static.request_reload()
    eventually(lambda: EndpointId("c", 0) in sink.endpoints)
    assert sink.take() == [
        ("remove", EndpointId("a", 0)),
        ("remove", EndpointId("a", 1)),
        ("set", EndpointId("b", 0)),
        ("set", EndpointId("c", 0)),
    ]
    assert sink.endpoints[EndpointId("b", 0)].pub == "tcp://127.0.0.1:5700"
    assert EndpointId("flagged", 0) in sink.endpoints  # flags are never touched by the file


def test_a_changed_file_is_picked_up_without_a_signal(
    running: tuple[StaticDiscovery, RecordingSink], endpoints_file: Path
) -> None:
    static, sink = running
    sink.take()
    endpoints_file.write_text(B)
    os.utime(endpoints_file, ns=(1, 1))  # a different mtime even on coarse clocks
    eventually(lambda: EndpointId("a", 0) not in sink.endpoints)
    assert static.stats().reloads >= 1


def test_a_bad_file_keeps_the_previous_endpoints_and_is_counted(endpoints_file: Path) -> None:
    sink = RecordingSink()
    # the thread only wakes on request here, so the reloads below are the only ones
    static = StaticDiscovery(sink, FLAG, str(endpoints_file), poll_seconds=3600)
    static.load_initial()
    static.start()
    before = dict(sink.endpoints)
    sink.take()
    endpoints_file.write_text("- {name: a, model: m}\n")
    assert static.reload() == []
    endpoints_file.write_text("- {name: flagged, model: m, pub: 'tcp://127.0.0.1:1'}\n")
    assert static.reload() == []
    endpoints_file.unlink()
    assert static.reload() == []
    assert sink.endpoints == before
    assert sink.take() == []
    assert static.stats().errors == {"invalid": 2, "conflict": 1}
    assert "endpoints-file" in (static.last_error() or "")
    endpoints_file.write_text(A + B)
    assert static.reload() == []  # back to what is running: nothing to send
    assert static.last_error() is None
    assert static.stop(timeout_seconds=5)


def test_a_bad_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text('[{"name": "a", "model": "m", "pub": "tcp://[::1:5557"}]')
    static = StaticDiscovery(RecordingSink(), (), str(path))
    with pytest.raises(ConfigError, match=r"--endpoints-file .*entry 0: pub"):
        static.load_initial()
    missing = StaticDiscovery(RecordingSink(), (), str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="No such file"):
        missing.load_initial()


def test_flags_only_need_no_thread() -> None:
    sink = RecordingSink()
    static = StaticDiscovery(sink, FLAG, None)
    static.load_initial()
    static.start()
    assert static.synced.is_set()
    assert list(sink.endpoints) == [EndpointId("flagged", 0)]
    assert static.stop(timeout_seconds=1)
