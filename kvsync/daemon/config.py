"""Settings of ``kvsync serve``: flag > ``KVSYNC_<FLAG>`` env var > default. Pure.

``load(argv, env, in_cluster=...)`` parses the ``serve`` flags and returns a frozen ``Settings``.
It reads no environment, file or clock of its own: the caller passes ``env`` and the one fact
about the machine it needs (``in_cluster``: the Kubernetes service account is mounted, which makes
``kubernetes`` the default discovery). Files named by settings (``--endpoints-file``,
``--api-token-file``) are read by the runtime, not here.

Every option is a row of ``OPTIONS``; ``--help`` names each option's env var and default. Four
AIBrix variables (``AIBRIX_SYNC_*``) are honoured when the ``KVSYNC_`` name is unset.
Repeatable flags read their env var as a list: namespaces separated by commas, endpoint specs
(which contain commas) by semicolons or newlines.

Raises ``ConfigError`` (one line, naming the flag and its env var) for any invalid value; the
CLI prints it and exits 2.
"""

import argparse
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Final, Literal, NoReturn

from kvsync.daemon.options import (
    choice,
    endpoint_spec,
    int_in,
    medium_weights,
    minutes_to_seconds,
    non_empty,
    optional_port,
    seconds,
    text,
)
from kvsync.discovery.kubernetes.pods import PodDefaults
from kvsync.errors import ConfigError
from kvsync.index import values
from kvsync.index.backend import BACKENDS, DEFAULT_BACKEND
from kvsync.model import Endpoint

ENV_PREFIX: Final = "KVSYNC_"
REDACTED: Final = "<redacted>"
DEFAULT_MEDIUM_WEIGHTS: Final = {
    **values.DEFAULT_MEDIUM_WEIGHTS,
    values.ANY_MEDIUM: values.OTHER_MEDIUM_WEIGHT,
}
MAX_SHARDS: Final = 1024
_LIMITS: Final = values.DEFAULT_LIMITS
_POD: Final = PodDefaults()

DiscoveryMode = Literal["kubernetes", "static"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything ``kvsync serve`` needs, validated. Field names are the flags in snake_case."""

    discovery: DiscoveryMode
    namespace: tuple[str, ...] = ()
    selector: str = "model.aibrix.ai/kv-events-enabled=true"
    endpoint: tuple[Endpoint, ...] = ()
    endpoints_file: str | None = None
    pub_port: int = _POD.pub_port
    replay_port: int | None = _POD.replay_port
    dp_size: int = _POD.dp_size
    topic: str = _POD.topic
    engine_port: int = _POD.engine_port
    model_label: str = _POD.model_label
    lora_label: str = _POD.lora_label
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    api_token: str | None = None
    api_token_file: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_query_tokens: int = 1_000_000
    tokenize_timeout_seconds: float = 2.0
    tokenize_cache_entries: int = 4096
    hint_ttl_seconds: float = 2.0
    default_block_size: int = values.DEFAULT_BLOCK_SIZE
    medium_weights: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_MEDIUM_WEIGHTS))
    )
    index_backend: str = DEFAULT_BACKEND
    redis_url: str | None = None
    redis_password_file: str | None = None
    redis_tls_ca_file: str | None = None
    shard_count: int = 1
    shard_index: int = 0
    max_contexts: int = _LIMITS.max_contexts
    max_prefixes_per_context: int = _LIMITS.max_keys_per_context
    # The idle-context sweep; capacity eviction happens as events arrive.
    eviction_interval_seconds: float = 60.0
    idle_ttl_seconds: float = _LIMITS.idle_ttl_seconds
    replay_timeout_seconds: float = 5.0
    replay_cooldown_seconds: float = 30.0
    # Engines' /metrics (kvsync.load); an interval of 0 turns scraping off.
    load_interval_seconds: float = 1.0
    load_timeout_seconds: float = 0.5
    load_concurrency: int = 32
    # Answers kept for POST /v1/feedback (kvsync.audit); 0 keeps none.
    audit_window_seconds: float = 300.0
    audit_max_answers: int = 100_000
    drain_seconds: float = 5.0
    stop_timeout_seconds: float = 5.0
    log_level: LogLevel = "info"
    log_format: LogFormat = "json"

    def pod_defaults(self) -> PodDefaults:
        """What a pod gets when its annotations say nothing: these settings' pod fields."""
        return PodDefaults(**{f.name: getattr(self, f.name) for f in fields(PodDefaults)})

    def redacted(self) -> dict[str, Any]:
        """The settings as plain values for the start-up log line, secrets replaced."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        if values["api_token"] is not None:
            values["api_token"] = REDACTED
        values["medium_weights"] = dict(self.medium_weights)
        values["endpoint"] = [_describe(e) for e in self.endpoint]
        values["namespace"] = list(self.namespace)
        return values


def _describe(endpoint: Endpoint) -> str:
    return f"{endpoint.id.pod}#{endpoint.id.dp_rank} {endpoint.model} {endpoint.pub}"


@dataclass(frozen=True, slots=True)
class Option:
    """One ``serve`` flag: its Settings field, parser, default and help."""

    field: str
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    aibrix: str | None = None  # AIBrix env var honoured when KVSYNC_<FLAG> is unset
    aibrix_convert: Callable[[str], str] = text

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.field.upper()


OPTIONS: Final[tuple[Option, ...]] = (
    Option("discovery", choice("kubernetes", "static"),
           "where endpoints come from (default: kubernetes in a cluster, else static)"),
    Option("namespace", non_empty, "namespace to watch, repeatable (default: all)",
           repeatable=True),
    Option("selector", text, "label selector of the pods to subscribe to"),
    Option("endpoint", endpoint_spec,
           "static endpoint SPEC name=..,model=..,pub=tcp://h:p[,replay=..,dp_size=..,"
           "lora_id=..,topic=..,engine_port=..], repeatable (env: separated by ';')",
           repeatable=True),
    Option("endpoints_file", non_empty, "JSON or YAML list of endpoint specs"),
    Option("pub_port", int_in(1, 65535), "pods' KV-event PUB port (rank r: port + r)"),
    Option("replay_port", optional_port, "pods' replay ROUTER port (none: no replay)"),
    Option("dp_size", int_in(1, 1024), "data-parallel ranks per pod"),
    Option("topic", text, "topic prefix to subscribe to ('' = all)"),
    Option("engine_port", int_in(1, 65535),
           "pods' engine HTTP port (vLLM's OpenAI server: /tokenize); on the pub host"),
    Option("model_label", non_empty, "pod label (or annotation) naming the model"),
    Option("lora_label", non_empty, "pod label with the LoRA adapter id"),
    Option("http_host", non_empty, "HTTP listen address"),
    Option("http_port", int_in(0, 65535), "HTTP listen port (0: any free port)"),
    Option("api_token", non_empty, "bearer token required on /v1/* (default: none)"),
    Option("api_token_file", non_empty, "file holding the bearer token for /v1/*"),
    Option("max_body_bytes", int_in(1, 1 << 31), "largest /v1/match request body"),
    Option("max_query_tokens", int_in(1, 1 << 31), "most token ids in one /v1/match"),
    Option("tokenize_timeout_seconds", seconds(allow_zero=False),
           "budget to tokenize a prompt through a pod's engine (every attempt)"),
    Option("tokenize_cache_entries", int_in(0, 1 << 24),
           "prompts whose tokens are kept (LRU; 0: no cache)"),
    Option("hint_ttl_seconds", seconds(allow_zero=False),
           "how long a hint (POST /v1/hint) stays speculative unless the request sets ttl_s"),
    Option("default_block_size", int_in(1, 1 << 16), "block size answered for unknown models"),
    Option("medium_weights", medium_weights, "score weight per medium ('*' = any other)"),
    Option("index_backend", choice(*BACKENDS),
           "where the prefix index lives (memory: in-process; redis: shared, --redis-url)"),
    Option("redis_url", non_empty,
           "redis backend: redis://host:port of a cluster seed or one node (rediss://: TLS)"),
    Option("redis_password_file", non_empty, "redis backend: file holding the password"),
    Option("redis_tls_ca_file", non_empty, "redis backend: CA bundle for a rediss:// URL"),
    Option("shard_count", int_in(1, MAX_SHARDS),
           "replicas sharing the endpoints: each subscribes to its share (rendezvous hashing)"),
    Option("shard_index", int_in(0, MAX_SHARDS - 1), "this replica's shard, in [0, shard count)"),
    Option("max_contexts", int_in(1, 1 << 31), "most (model, LoRA) contexts kept",
           aibrix="AIBRIX_SYNC_MAX_CONTEXTS"),
    Option("max_prefixes_per_context", int_in(1, 1 << 40), "most blocks kept per context",
           aibrix="AIBRIX_SYNC_MAX_PREFIXES_PER_CONTEXT"),
    Option("eviction_interval_seconds", seconds(allow_zero=False), "how often eviction runs",
           aibrix="AIBRIX_SYNC_EVICTION_INTERVAL_SECONDS"),
    Option("idle_ttl_seconds", seconds(allow_zero=False),
           "evict blocks not touched for this long", aibrix="AIBRIX_SYNC_EVICTION_DURATION_MINUTES",
           aibrix_convert=minutes_to_seconds),
    Option("replay_timeout_seconds", seconds(allow_zero=False),
           "a replay fails after this long without a reply (cap: this + 50 ms per batch)"),
    Option("replay_cooldown_seconds", seconds(allow_zero=True),
           "wait after a failed replay before the next"),
    Option("load_interval_seconds", seconds(allow_zero=True),
           "scrape every engine's /metrics this often (0: never)"),
    Option("load_timeout_seconds", seconds(allow_zero=False),
           "a /metrics scrape fails after this long, connect to last byte"),
    Option("load_concurrency", int_in(1, 4096), "most /metrics scrapes in flight at once"),
    Option("audit_window_seconds", seconds(allow_zero=True),
           "keep each /v1/match answer this long for /v1/feedback (0: keep none)"),
    Option("audit_max_answers", int_in(0, 1 << 24), "most /v1/match answers kept for feedback"),
    Option("drain_seconds", seconds(allow_zero=True), "keep answering after SIGTERM this long"),
    Option("stop_timeout_seconds", seconds(allow_zero=False), "stop budget per component"),
    Option("log_level", choice("debug", "info", "warning", "error"), "log level"),
    Option("log_format", choice("json", "console"), "log line format"),
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``ConfigError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def parser(prog: str = "kvsync serve") -> argparse.ArgumentParser:
    """The ``serve`` argument parser; every value is a string, parsed after precedence."""
    defaults = Settings(discovery="static").redacted()
    result = _Parser(prog=prog, description="Run the kvsync daemon.")
    for option in OPTIONS:
        default = "see above" if option.field == "discovery" else defaults[option.field]
        if isinstance(default, dict):
            default = ",".join(f"{k}={v}" for k, v in default.items())
        extra = f", else {option.aibrix}" if option.aibrix else ""
        result.add_argument(
            option.flag,
            dest=option.field,
            metavar=option.field.upper().rsplit("_", 1)[-1] if option.repeatable else None,
            action="append" if option.repeatable else "store",
            help=f"{option.help} [env {option.env}{extra}; default {default!s}]",
        )
    return result


def _raw_value(option: Option, flag_value: Any, env: Mapping[str, str]) -> list[str] | None:
    """The winning raw string(s) for one option: flag, then KVSYNC_ env, then AIBrix env."""
    if flag_value is not None:
        return list(flag_value) if option.repeatable else [flag_value]
    if option.env in env:
        raw = env[option.env]
    elif option.aibrix is not None and option.aibrix in env:
        raw = option.aibrix_convert(env[option.aibrix])
    else:
        return None
    if not option.repeatable:
        return [raw]
    separators = ";\n" if option.field == "endpoint" else ","
    for sep in separators[1:]:
        raw = raw.replace(sep, separators[0])
    return [part for part in raw.split(separators[0]) if part.strip()]


def _source(option: Option, flag_value: Any, env: Mapping[str, str]) -> str:
    if flag_value is not None:
        return option.flag
    if option.env in env or option.aibrix is None:
        return option.env
    return option.aibrix


def load(argv: Sequence[str], env: Mapping[str, str], *, in_cluster: bool = False) -> Settings:
    """Parse ``serve`` flags with env fallbacks into ``Settings``; raises ``ConfigError``."""
    args = vars(parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    # Static endpoints last: a spec without engine_port takes --engine-port.
    for option in sorted(OPTIONS, key=lambda o: o.field == "endpoint"):
        raws = _raw_value(option, args[option.field], env)
        if raws is None:
            continue
        parse = option.parse
        if option.field == "endpoint":
            parse = functools.partial(
                endpoint_spec, engine_port=values.get("engine_port", _POD.engine_port)
            )
        try:
            parsed = [parse(raw) for raw in raws]
        except (ValueError, ConfigError) as exc:
            where = _source(option, args[option.field], env)
            if isinstance(exc, ConfigError) and where == option.flag:
                raise  # the spec parser's message already names the flag
            raise ConfigError(f"{where}: {exc}") from None
        if option.field == "endpoint":
            values["endpoint"] = tuple(e for group in parsed for e in group)
        elif option.repeatable:
            values[option.field] = tuple(parsed)
        else:
            values[option.field] = parsed[0]
    values.setdefault("discovery", "kubernetes" if in_cluster else "static")
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    if settings.discovery == "kubernetes" and (settings.endpoint or settings.endpoints_file):
        raise ConfigError("--endpoint / --endpoints-file need --discovery static")
    if settings.api_token is not None and settings.api_token_file is not None:
        raise ConfigError("give --api-token or --api-token-file, not both")
    if settings.index_backend == "redis" and settings.redis_url is None:
        raise ConfigError("--index-backend redis needs --redis-url")
    if settings.redis_tls_ca_file is not None and not (settings.redis_url or "").startswith(
        "rediss://"
    ):
        raise ConfigError("--redis-tls-ca-file needs a rediss:// --redis-url")
    if settings.shard_index >= settings.shard_count:
        raise ConfigError(
            f"--shard-index (KVSYNC_SHARD_INDEX) {settings.shard_index} must be below "
            f"--shard-count (KVSYNC_SHARD_COUNT) {settings.shard_count}: shards count from 0"
        )
    ids = [e.id for e in settings.endpoint]
    duplicates = sorted({f"{i.pod}#{i.dp_rank}" for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"--endpoint: duplicate endpoint {', '.join(duplicates)}")
