"""Static endpoints, pure: ``--endpoint`` specs and ``--endpoints-file`` documents → ``Endpoint``s.

Pure functions, no I/O: ``kvsync.daemon.config`` parses the flags at start-up (a ``ConfigError``
exits 2) and ``kvsync.discovery.static`` re-reads the file on SIGHUP or change. Raises
``ConfigError`` (a one-line message for the user) and nothing else. The address helpers are shared
with discovery.

The engine address (``Endpoint.engine``, the vLLM server's HTTP port on the publisher's host: the
OpenAI API and the KV-event sockets live in one process) is the spec's ``engine_port``, else the
caller's default (``--engine-port``, 8000).

Static endpoints carry an empty ``generation``: their identity is the name, and any change of a
field already makes the subscriber manager purge and resubscribe.
"""

import ipaddress
import json
from collections.abc import Mapping
from typing import Final

import yaml

from kvsync.errors import ConfigError
from kvsync.model import Endpoint, EndpointId

PORT_MAX: Final = 65535
DP_SIZE_MAX: Final = 1024  # a sanity cap: more ranks than this on one pod is a typo, not a topology
DEFAULT_ENGINE_PORT: Final = 8000  # vLLM's `vllm serve --port` default
SPEC_KEYS: Final = (
    "name", "model", "pub", "replay", "dp_size", "lora_id", "topic", "engine_port",
)  # fmt: skip
REQUIRED_SPEC_KEYS: Final = ("name", "model", "pub")


def int_in_range(what: str, value: object, low: int, high: int) -> int:
    """An int (or its decimal string) in [low, high]; else ``ValueError`` saying why."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] == "-" else text
        if not (digits.isascii() and digits.isdigit()) or len(text) > 20:
            raise ValueError(f"{what} must be an integer, got {value!r}")
        value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{what} must be in [{low}, {high}], got {value}")
    return value


def host_for_url(host: str) -> str:
    """An IP or DNS host as it goes into ``tcp://host:port``: IPv6 literals get brackets."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]" if address.version == 6 else str(address)


def split_tcp_address(what: str, address: str) -> tuple[str, int]:
    """``tcp://host:port`` → (host as written, IPv6 in brackets; port). ``ValueError`` if not."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme != "tcp":
        raise ValueError(f"{what} must look like tcp://host:port, got {address!r}")
    if rest.startswith("["):
        close = rest.find("]")
        host, port_text = rest[: close + 1], rest[close + 1 :]
        if close < 0 or not port_text.startswith(":"):
            raise ValueError(f"{what} must look like tcp://[ipv6]:port, got {address!r}")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{what} has an invalid IPv6 host {host}") from None
        port_text = port_text[1:]
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{what} must look like tcp://host:port, got {address!r}")
        if ":" in host:
            raise ValueError(f"{what}: put an IPv6 host in brackets (tcp://[{host}]:port)")
        if any(c.isspace() or c in "/@?#*" for c in host):
            raise ValueError(f"{what} has an invalid host {host!r}")
    return host, int_in_range(f"{what} port", port_text, 1, PORT_MAX)


def engine_url(host: str, port: int) -> str:
    """The engine's HTTP base URL from a host as ``host_for_url`` writes it and a port."""
    return f"http://{host}:{port}"


def rank_endpoints(
    pod: str,
    model: str,
    host: str,
    pub_port: int,
    replay_port: int | None,
    *,
    dp_size: int = 1,
    lora_id: int | None = None,
    topic: str = "",
    generation: str = "",
    engine_port: int | None = None,
) -> list[Endpoint]:
    """One ``Endpoint`` per data-parallel rank: rank r uses base port + r (live and replay).

    Every rank gets the same engine address: one vLLM API server fronts all ranks of a pod.
    """
    engine = None if engine_port is None else engine_url(host, engine_port)
    top = max(pub_port, replay_port or 0) + dp_size - 1
    if top > PORT_MAX:
        raise ValueError(f"dp_size {dp_size} runs the ports past {PORT_MAX}")
    return [
        Endpoint(
            id=EndpointId(pod, rank),
            model=model,
            pub=f"tcp://{host}:{pub_port + rank}",
            replay=None if replay_port is None else f"tcp://{host}:{replay_port + rank}",
            lora_id=lora_id,
            topic=topic,
            generation=generation,
            engine=engine,
        )
        for rank in range(dp_size)
    ]


def _endpoints_from_fields(fields: Mapping[str, object], engine_port: int) -> list[Endpoint]:
    """The static endpoints one spec describes; ``ValueError`` naming the bad key otherwise."""
    unknown = sorted(set(fields) - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(SPEC_KEYS)})")
    texts: dict[str, str] = {}
    for key in ("name", "model", "pub", "replay", "topic"):
        value = fields.get(key)
        if value is None:
            if key in REQUIRED_SPEC_KEYS:
                raise ValueError(f"missing {key}=")
            continue
        if not isinstance(value, str) or (key != "topic" and not value.strip()):
            raise ValueError(f"{key} must be a non-empty string, got {value!r}")
        texts[key] = value.strip() if key != "topic" else value
    host, pub_port = split_tcp_address("pub", texts["pub"])
    replay_port = None
    if "replay" in texts:
        replay_host, replay_port = split_tcp_address("replay", texts["replay"])
        if replay_host != host:  # vLLM binds both sockets in the same process
            raise ValueError(f"replay host {replay_host} differs from pub host {host}")
    dp_size = int_in_range("dp_size", fields.get("dp_size", 1), 1, DP_SIZE_MAX)
    lora = fields.get("lora_id")
    lora_id = None if lora is None else int_in_range("lora_id", lora, 0, 2**63 - 1)
    engine = int_in_range("engine_port", fields.get("engine_port", engine_port), 1, PORT_MAX)
    return rank_endpoints(
        texts["name"],
        texts["model"],
        host,
        pub_port,
        replay_port,
        dp_size=dp_size,
        lora_id=lora_id,
        topic=texts.get("topic", ""),
        engine_port=engine,
    )


def parse_endpoint_spec(spec: str, *, engine_port: int = DEFAULT_ENGINE_PORT) -> list[Endpoint]:
    """``name=pod-a,model=demo,pub=tcp://127.0.0.1:5557[,replay=…][,dp_size=N][,lora_id=N][,topic=…]
    [,engine_port=N]``; the engine is on the pub host, at ``engine_port`` unless the spec says.

    Raises ``ConfigError`` with a one-line message naming the spec and the problem.
    """
    fields: dict[str, str] = {}
    try:
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"expected key=value, got {item.strip()!r}")
            if key in fields:
                raise ValueError(f"{key}= given twice")
            fields[key] = value
        return _endpoints_from_fields(fields, engine_port)
    except ValueError as exc:
        raise ConfigError(f"--endpoint {spec!r}: {exc}") from None


def parse_endpoints_document(
    text: str, *, engine_port: int = DEFAULT_ENGINE_PORT
) -> list[Endpoint]:
    """A JSON or YAML list of mappings with the ``--endpoint`` keys (ints may be numbers).

    An empty document is an empty list. Names must be unique. Raises ``ConfigError`` (one line).
    """
    try:
        document: object = json.loads(text)
    except (ValueError, RecursionError):
        try:
            document = yaml.safe_load(text)
        # PyYAML raises ValueError on impossible timestamps or !!int tags, RecursionError on nesting
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(
                f"endpoints file is neither JSON nor YAML{line}: {problem:.80}"
            ) from None
    if document is None:
        return []
    if not isinstance(document, list):
        kind = type(document).__name__
        raise ConfigError(f"endpoints file must be a list of endpoints, got a {kind}")
    endpoints: list[Endpoint] = []
    names: set[str] = set()
    for position, entry in enumerate(document):
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise ConfigError(f"endpoints file entry {position}: expected a mapping of key: value")
        try:
            found = _endpoints_from_fields(entry, engine_port)
        except ValueError as exc:
            raise ConfigError(f"endpoints file entry {position}: {exc}") from None
        name = found[0].id.pod
        if name in names:
            raise ConfigError(f"endpoints file entry {position}: name {name!r} given twice")
        names.add(name)
        endpoints.extend(found)
    return endpoints
