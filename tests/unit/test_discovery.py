"""kvsync.discovery.base: pod → endpoints (table-driven, plus fuzzing), diff and the endpoint
table."""

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsync.discovery import base
from kvsync.discovery.base import EndpointTable, RemoveEndpoint, SetEndpoint
from kvsync.discovery.kubernetes import pods
from kvsync.discovery.kubernetes.pods import PodDefaults, PodView, Skipped, SkipReason
from kvsync.model import Endpoint, EndpointId

MODEL = "model.aibrix.ai/name"
LORA = "model.aibrix.ai/lora-id"
DEFAULTS = PodDefaults()


def pod_json(
    *,
    name: str = "vllm-0",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    ip: str | None = "10.0.0.7",
    restarts: tuple[int, ...] = (0,),
    **status: Any,
) -> dict[str, Any]:
    """A pod as the API serialises it, with a model label unless told otherwise."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "namespace": "default",
            "name": name,
            "uid": "uid-1",
            "resourceVersion": "42",
            "labels": {MODEL: "llama"} if labels is None else labels,
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "containerStatuses": [
                {"name": f"c{i}", "restartCount": n} for i, n in enumerate(restarts)
            ],
            **status,
        },
    }


def endpoints_of(raw: object, defaults: PodDefaults = DEFAULTS) -> list[Endpoint] | Skipped:
    view = pods.read_pod(raw)
    return view if isinstance(view, Skipped) else pods.pod_endpoints(view, defaults)


def test_labelled_pod_gives_one_endpoint_on_the_default_port() -> None:
    assert endpoints_of(pod_json()) == [
        Endpoint(
            id=EndpointId("default/vllm-0", 0),
            model="llama",
            pub="tcp://10.0.0.7:5557",
            replay=None,
            lora_id=None,
            topic="",
            generation="uid-1:0",
            engine="http://10.0.0.7:8000",
        )
    ]


def test_engine_port_annotation_and_default_give_the_engine_address_of_every_rank() -> None:
    notes = {"kvsync.io/engine-port": "9000", "kvsync.io/dp-size": "2"}
    found = endpoints_of(pod_json(annotations=notes))
    assert not isinstance(found, Skipped)
    assert [e.engine for e in found] == ["http://10.0.0.7:9000"] * 2
    defaulted = endpoints_of(pod_json(), PodDefaults(engine_port=8100))
    assert not isinstance(defaulted, Skipped)
    assert [e.engine for e in defaulted] == ["http://10.0.0.7:8100"]
    bad = endpoints_of(pod_json(annotations={"kvsync.io/engine-port": "70000"}))
    assert isinstance(bad, Skipped)
    assert bad.reason is SkipReason.BAD_ANNOTATION


# (case, labels, annotations, ip, defaults) → [(dp_rank, pub, replay, model, lora_id, topic)]
ENDPOINT_CASES: list[tuple[str, dict[str, str], dict[str, str], str, PodDefaults, list[Any]]] = [
    (
        "model from the annotation when no label",
        {},
        {MODEL: "mistral"},
        "10.0.0.7",
        DEFAULTS,
        [(0, "tcp://10.0.0.7:5557", None, "mistral", None, "")],
    ),
    (
        "label wins over annotation",
        {MODEL: "llama"},
        {MODEL: "mistral"},
        "10.0.0.7",
        DEFAULTS,
        [(0, "tcp://10.0.0.7:5557", None, "llama", None, "")],
    ),
    (
        "annotations set ports, dp size and topic",
        {MODEL: "llama", LORA: "7"},
        {
            "kvsync.io/pub-port": "6000",
            "kvsync.io/replay-port": "7000",
            "kvsync.io/dp-size": "2",
            "kvsync.io/topic": "kv",
        },
        "10.0.0.7",
        DEFAULTS,
        [
            (0, "tcp://10.0.0.7:6000", "tcp://10.0.0.7:7000", "llama", 7, "kv"),
            (1, "tcp://10.0.0.7:6001", "tcp://10.0.0.7:7001", "llama", 7, "kv"),
        ],
    ),
    (
        "CLI defaults apply when annotations are absent",
        {MODEL: "llama"},
        {},
        "10.0.0.7",
        PodDefaults(pub_port=5600, replay_port=5700, dp_size=2, topic="t"),
        [
            (0, "tcp://10.0.0.7:5600", "tcp://10.0.0.7:5700", "llama", None, "t"),
            (1, "tcp://10.0.0.7:5601", "tcp://10.0.0.7:5701", "llama", None, "t"),
        ],
    ),
    (
        "annotation overrides the default replay port",
        {MODEL: "llama"},
        {"kvsync.io/replay-port": "9000"},
        "10.0.0.7",
        PodDefaults(replay_port=5558),
        [(0, "tcp://10.0.0.7:5557", "tcp://10.0.0.7:9000", "llama", None, "")],
    ),
    (
        "IPv6 pod IP in brackets",
        {MODEL: "llama"},
        {},
        "fd00::7",
        DEFAULTS,
        [(0, "tcp://[fd00::7]:5557", None, "llama", None, "")],
    ),
    (
        "custom model and LoRA label keys",
        {"app/model": "qwen", "app/lora": "0"},
        {},
        "10.0.0.7",
        PodDefaults(model_label="app/model", lora_label="app/lora"),
        [(0, "tcp://10.0.0.7:5557", None, "qwen", 0, "")],
    ),
]


@pytest.mark.parametrize(
    ("labels", "annotations", "ip", "defaults", "expected"),
    [case[1:] for case in ENDPOINT_CASES],
    ids=[case[0] for case in ENDPOINT_CASES],
)
def test_pod_endpoints(
    labels: dict[str, str],
    annotations: dict[str, str],
    ip: str,
    defaults: PodDefaults,
    expected: list[Any],
) -> None:
    found = endpoints_of(pod_json(labels=labels, annotations=annotations, ip=ip), defaults)
    assert not isinstance(found, Skipped), found
    assert [(e.id.dp_rank, e.pub, e.replay, e.model, e.lora_id, e.topic) for e in found] == expected
    assert {e.id.pod for e in found} == {"default/vllm-0"}


def _without(path: str) -> Any:
    raw = pod_json()
    *parents, leaf = path.split(".")
    target = raw
    for part in parents:
        target = target[part]
    del target[leaf]
    return raw


# (case, pod JSON) → skip reason
SKIP_CASES: list[tuple[str, object, SkipReason]] = [
    ("no model label or annotation", pod_json(labels={"app": "x"}), SkipReason.NO_MODEL),
    ("blank model", pod_json(labels={MODEL: " "}), SkipReason.NO_MODEL),
    ("no IP yet", pod_json(ip=None), SkipReason.NO_IP),
    ("empty IP", pod_json(ip=""), SkipReason.NO_IP),
    ("no status at all", _without("status"), SkipReason.NO_IP),
    ("terminating", {**pod_json(), "metadata": {**pod_json()["metadata"],
                     "deletionTimestamp": "2026-01-01T00:00:00Z"}}, SkipReason.TERMINATING),
    ("succeeded", pod_json(phase="Succeeded"), SkipReason.TERMINATING),
    ("failed", pod_json(phase="Failed"), SkipReason.TERMINATING),
    ("IP is not an IP", pod_json(ip="10.0.0.300"), SkipReason.BAD_IP),
    ("LoRA label not an int", pod_json(labels={MODEL: "m", LORA: "abc"}), SkipReason.BAD_LABEL),
    ("pub port not an int", pod_json(annotations={"kvsync.io/pub-port": "x"}),
     SkipReason.BAD_ANNOTATION),
    ("pub port out of range", pod_json(annotations={"kvsync.io/pub-port": "70000"}),
     SkipReason.BAD_ANNOTATION),
    ("replay port zero", pod_json(annotations={"kvsync.io/replay-port": "0"}),
     SkipReason.BAD_ANNOTATION),
    ("dp size zero", pod_json(annotations={"kvsync.io/dp-size": "0"}), SkipReason.BAD_ANNOTATION),
    ("dp size past the ports", pod_json(annotations={"kvsync.io/pub-port": "65535",
                                                     "kvsync.io/dp-size": "2"}),
     SkipReason.BAD_ANNOTATION),
    ("not a mapping", ["pod"], SkipReason.MALFORMED),
    ("no metadata", _without("metadata"), SkipReason.MALFORMED),
    ("no uid", _without("metadata.uid"), SkipReason.MALFORMED),
    ("no namespace", _without("metadata.namespace"), SkipReason.MALFORMED),
    ("labels not strings", pod_json(labels={MODEL: 3}),  # type: ignore[dict-item]  # on purpose
     SkipReason.MALFORMED),
    ("restartCount negative", pod_json(restarts=(-1,)), SkipReason.MALFORMED),
    ("containerStatuses not a list", pod_json(containerStatuses={}), SkipReason.MALFORMED),
    ("podIP not a string", pod_json(ip=7), SkipReason.MALFORMED),  # type: ignore[arg-type]
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "reason"), [c[1:] for c in SKIP_CASES], ids=[c[0] for c in SKIP_CASES]
)
def test_unusable_pod_is_skipped_with_its_reason(raw: object, reason: SkipReason) -> None:
    found = endpoints_of(raw)
    assert isinstance(found, Skipped)
    assert found.reason is reason
    assert found.detail


def test_generation_changes_with_uid_and_restarts_only() -> None:
    base = endpoints_of(pod_json(restarts=(0, 1)))
    same = endpoints_of(pod_json(restarts=(0, 1), podIPs=[{"ip": "10.0.0.7"}]))
    restarted = endpoints_of(pod_json(restarts=(1, 1)))
    recreated = copy.deepcopy(pod_json(restarts=(0, 1)))
    recreated["metadata"]["uid"] = "uid-2"
    assert isinstance(base, list)
    assert isinstance(restarted, list)
    assert same == base
    assert [e.generation for e in base] == ["uid-1:1"]
    assert [e.generation for e in restarted] == ["uid-1:2"]
    assert endpoints_of(recreated) != base


def test_pod_view_key_and_fields() -> None:
    view = pods.read_pod(pod_json(restarts=(2, 3)))
    assert view == PodView(
        namespace="default",
        name="vllm-0",
        uid="uid-1",
        labels={MODEL: "llama"},
        annotations={},
        pod_ip="10.0.0.7",
        phase="Running",
        deleting=False,
        restarts=5,
    )
    assert isinstance(view, PodView)
    assert view.key == "default/vllm-0"


_json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=12)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=10,
)
_interesting = st.sampled_from(
    ["metadata", "status", "labels", "annotations", "podIP", "phase", "containerStatuses",
     "restartCount", "uid", "name", "namespace", "deletionTimestamp", MODEL, LORA,
     "kvsync.io/pub-port", "kvsync.io/replay-port", "kvsync.io/dp-size", "kvsync.io/topic"]
)  # fmt: skip


@st.composite
def mutated_pods(draw: st.DrawFn) -> object:
    """A valid pod with a few fields replaced by arbitrary JSON, or arbitrary JSON altogether."""
    if draw(st.booleans()):
        return draw(_json)
    raw = pod_json(
        labels=draw(
            st.sampled_from([{MODEL: "m"}, {MODEL: "m", LORA: "3"}, {MODEL: "m", LORA: "x"}])
        ),
        annotations=draw(st.dictionaries(_interesting, st.text(max_size=8), max_size=4)),
        ip=draw(st.none() | st.sampled_from(["10.0.0.1", "::1", "x", ""])),
    )
    for _ in range(draw(st.integers(0, 3))):
        section = raw[draw(st.sampled_from(["metadata", "status"]))]
        section[draw(_interesting)] = draw(_json)
    return raw


@settings(max_examples=400, deadline=None)
@given(mutated_pods(), st.booleans())
def test_malformed_pods_never_raise_only_skip(raw: object, v6_defaults: bool) -> None:
    defaults = PodDefaults(replay_port=5558) if v6_defaults else DEFAULTS
    found = endpoints_of(raw, defaults)
    if isinstance(found, Skipped):
        assert isinstance(found.reason, SkipReason)
        assert isinstance(found.detail, str)
        return
    assert found
    assert [e.id.dp_rank for e in found] == list(range(len(found)))
    assert all(e.pub.startswith("tcp://") and e.model for e in found)


def _endpoint(pod: str, rank: int = 0, pub: str = "tcp://10.0.0.1:5557") -> Endpoint:
    return Endpoint(id=EndpointId(pod, rank), model="m", pub=pub)


def test_diff_removes_first_then_sets_new_and_changed_only() -> None:
    a, b, c = _endpoint("ns/a"), _endpoint("ns/b"), _endpoint("ns/c")
    b_moved = _endpoint("ns/b", pub="tcp://10.0.0.2:5557")
    assert base.diff([a, b], [b_moved, c, a]) == [
        SetEndpoint(b_moved),
        SetEndpoint(c),
    ]
    assert base.diff([a, b, c], [c]) == [
        RemoveEndpoint(a.id),
        RemoveEndpoint(b.id),
    ]
    assert base.diff([a, c], [b, c]) == [RemoveEndpoint(a.id), SetEndpoint(b)]
    assert base.diff([a, b], [b, a]) == []


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.tuples(st.sampled_from("abcd"), st.integers(0, 2), st.integers(1, 2))),
    st.sets(st.tuples(st.sampled_from("abcd"), st.integers(0, 2), st.integers(1, 2))),
)
def test_diff_applied_to_current_gives_desired(
    current_spec: set[tuple[str, int, int]], desired_spec: set[tuple[str, int, int]]
) -> None:
    def build(spec: set[tuple[str, int, int]]) -> dict[EndpointId, Endpoint]:
        # one endpoint per id: the highest address number wins
        built = {}
        for pod, rank, n in sorted(spec):
            built[EndpointId(pod, rank)] = _endpoint(pod, rank, f"tcp://10.0.0.{n}:5557")
        return built

    state, desired = build(current_spec), build(desired_spec)
    for command in base.diff(state.values(), desired.values()):
        match command:
            case RemoveEndpoint(id=gone):
                assert gone in state
                del state[gone]
            case SetEndpoint(endpoint=new):
                assert state.get(new.id) != new  # never a no-op set
                state[new.id] = new
    assert state == desired


def test_table_put_and_replace_all_report_only_changes() -> None:
    table = EndpointTable()
    a0, a1 = _endpoint("ns/a", 0), _endpoint("ns/a", 1, "tcp://10.0.0.1:5558")
    b0 = _endpoint("ns/b")
    assert table.put("ns/a", [a0, a1]) == [SetEndpoint(a0), SetEndpoint(a1)]
    assert table.put("ns/a", [a0, a1]) == []
    assert table.put("ns/a", [a0]) == [RemoveEndpoint(a1.id)]
    assert table.put("ns/b", [b0]) == [SetEndpoint(b0)]
    assert sorted(table.sources()) == ["ns/a", "ns/b"]
    # a re-list that finds the same pods changes nothing; one without ns/a removes exactly it
    assert table.replace_all({"ns/a": [a0], "ns/b": [b0]}) == []
    assert table.replace_all({"ns/b": [b0], "ns/c": []}) == [RemoveEndpoint(a0.id)]
    assert table.put("ns/b", []) == [RemoveEndpoint(b0.id)]
    assert table.endpoints() == []
    assert table.sources() == []
