"""Kubernetes pods as endpoints, pure: a pod (raw API JSON) becomes one ``Endpoint`` per rank.

Pure values and functions, no I/O, no clock, no logging: ``kvsync.discovery.kubernetes.watch``
feeds them and logs and counts what comes back. Nothing here raises: a pod that cannot be used is
a ``Skipped`` value whose ``reason`` is a metric label.

- ``read_pod(raw)`` reads a pod as the API serialises it (a JSON mapping with camelCase keys, e.g. a
  watch event's object) into a ``PodView``.
- ``pod_endpoints(view, defaults)`` gives one ``Endpoint`` per data-parallel rank. The model comes
  from the model label, else the annotation of the same key; ports (KV events, replay, and the
  engine's HTTP server: ``kvsync.io/engine-port``), DP size and topic from ``kvsync.io/*``
  annotations over the defaults (``PodDefaults``: the one home of those defaults).
  A pod is subscribed once it has an IP and is not terminating (never waiting for Ready: warm-up
  events matter). ``generation`` is the pod uid plus its total container restarts, so a restarted
  container purges that pod's blocks.
"""

import enum
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from kvsync.discovery.endpoints import (
    DEFAULT_ENGINE_PORT,
    DP_SIZE_MAX,
    PORT_MAX,
    host_for_url,
    int_in_range,
    rank_endpoints,
)
from kvsync.model import Endpoint

PUB_PORT_ANNOTATION: Final = "kvsync.io/pub-port"
REPLAY_PORT_ANNOTATION: Final = "kvsync.io/replay-port"
DP_SIZE_ANNOTATION: Final = "kvsync.io/dp-size"
TOPIC_ANNOTATION: Final = "kvsync.io/topic"
ENGINE_PORT_ANNOTATION: Final = "kvsync.io/engine-port"  # vLLM's HTTP server (OpenAI API)
LORA_MAX: Final = 2**63 - 1
TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})  # the pod's IP may be reused


class SkipReason(enum.StrEnum):
    """Why a pod yields no endpoints: the value is the metric label and the log field."""

    MALFORMED = "malformed"  # not a pod object: missing name/namespace/uid, wrong types
    NO_MODEL = "no_model"  # neither the model label nor the annotation
    NO_IP = "no_ip"  # not scheduled or not started yet
    TERMINATING = "terminating"  # deletionTimestamp set, or a terminal phase
    BAD_IP = "bad_ip"  # status.podIP is not an IP address
    BAD_ANNOTATION = "bad_annotation"  # a kvsync.io/* annotation that is not a usable value
    BAD_LABEL = "bad_label"  # the LoRA id label is not an integer


@dataclass(frozen=True, slots=True)
class Skipped:
    """A pod that gives no endpoints, and why."""

    reason: SkipReason
    detail: str


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a pod discovery reads; plain values, converted at the informer's edge."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod_ip: str | None = None
    phase: str | None = None
    deleting: bool = False  # metadata.deletionTimestamp is set
    restarts: int = 0  # sum of restartCount over the container statuses

    @property
    def key(self) -> str:
        """``namespace/name``: the pod part of its endpoints' ids."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PodDefaults:
    """What a pod gets when its annotations say nothing (``Settings`` fills these from the CLI)."""

    pub_port: int = 5557
    replay_port: int | None = None
    dp_size: int = 1
    topic: str = ""
    engine_port: int = DEFAULT_ENGINE_PORT
    model_label: str = "model.aibrix.ai/name"
    lora_label: str = "model.aibrix.ai/lora-id"


def _str_map(value: object) -> dict[str, str] | None:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return dict(value)


def read_pod(raw: object) -> PodView | Skipped:
    """A pod as JSON (``metadata``/``status`` mappings, camelCase keys) → ``PodView``. No raise."""
    if not isinstance(raw, Mapping):
        return Skipped(SkipReason.MALFORMED, f"pod is a {type(raw).__name__}, not a mapping")
    meta, status = raw.get("metadata"), raw.get("status", {})
    status = {} if status is None else status
    if not isinstance(meta, Mapping) or not isinstance(status, Mapping):
        return Skipped(SkipReason.MALFORMED, "metadata or status is not a mapping")
    ident = [meta.get(k) for k in ("namespace", "name", "uid")]
    if not all(isinstance(v, str) and v for v in ident):
        return Skipped(SkipReason.MALFORMED, f"namespace/name/uid missing: {ident!r:.200}")
    labels, annotations = _str_map(meta.get("labels")), _str_map(meta.get("annotations"))
    if labels is None or annotations is None:
        return Skipped(SkipReason.MALFORMED, "labels or annotations are not a string mapping")
    pod_ip, phase = status.get("podIP"), status.get("phase")
    if not isinstance(pod_ip, str | None) or not isinstance(phase, str | None):
        return Skipped(SkipReason.MALFORMED, "status.podIP or status.phase is not a string")
    statuses = status.get("containerStatuses")
    statuses = [] if statuses is None else statuses
    if not isinstance(statuses, list):
        return Skipped(SkipReason.MALFORMED, "status.containerStatuses is not a list")
    restarts = 0
    for entry in statuses:
        count = entry.get("restartCount", 0) if isinstance(entry, Mapping) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return Skipped(SkipReason.MALFORMED, f"bad containerStatuses entry {entry!r:.200}")
        restarts += count
    namespace, name, uid = (str(v) for v in ident)
    return PodView(
        namespace=namespace,
        name=name,
        uid=uid,
        labels=labels,
        annotations=annotations,
        pod_ip=pod_ip or None,
        phase=phase,
        deleting=meta.get("deletionTimestamp") is not None,
        restarts=restarts,
    )


def pod_endpoints(view: PodView, defaults: PodDefaults) -> list[Endpoint] | Skipped:
    """The endpoints of one pod (one per DP rank), or why it has none. Never raises."""
    model = view.labels.get(defaults.model_label) or view.annotations.get(defaults.model_label)
    if not model or not model.strip():
        return Skipped(SkipReason.NO_MODEL, f"no {defaults.model_label} label or annotation")
    if view.deleting or view.phase in TERMINAL_PHASES:
        return Skipped(SkipReason.TERMINATING, f"phase {view.phase}, deleting {view.deleting}")
    if view.pod_ip is None:
        return Skipped(SkipReason.NO_IP, "no status.podIP yet")
    try:
        host = host_for_url(str(ipaddress.ip_address(view.pod_ip)))
    except ValueError:
        return Skipped(SkipReason.BAD_IP, f"status.podIP {view.pod_ip!r:.100} is not an IP")
    lora_text = view.labels.get(defaults.lora_label)
    try:
        lora_id = None if lora_text is None else int_in_range("id", lora_text, 0, LORA_MAX)
    except ValueError as exc:
        return Skipped(SkipReason.BAD_LABEL, f"{defaults.lora_label}: {exc}")
    notes = view.annotations

    def number(key: str, default: int, high: int = PORT_MAX) -> int:
        return int_in_range(key, notes.get(key, default), 1, high)

    try:
        replay_port: int | None = None
        if REPLAY_PORT_ANNOTATION in notes or defaults.replay_port is not None:
            replay_port = number(REPLAY_PORT_ANNOTATION, defaults.replay_port or 0)
        pub_port = number(PUB_PORT_ANNOTATION, defaults.pub_port)
        dp_size = number(DP_SIZE_ANNOTATION, defaults.dp_size, DP_SIZE_MAX)
        engine_port = number(ENGINE_PORT_ANNOTATION, defaults.engine_port)
        return rank_endpoints(
            view.key,
            model.strip(),
            host,
            pub_port,
            replay_port,
            dp_size=dp_size,
            lora_id=lora_id,
            topic=notes.get(TOPIC_ANNOTATION, defaults.topic),
            generation=f"{view.uid}:{view.restarts}",
            engine_port=engine_port,
        )
    except ValueError as exc:
        return Skipped(SkipReason.BAD_ANNOTATION, str(exc))
