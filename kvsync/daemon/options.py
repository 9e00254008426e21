"""Parsers of ``serve`` option values: a raw string in, a value out. Pure.

Each parser takes the raw text of a flag or env var and returns the typed value; an invalid
value raises ``ValueError`` with a short "expected ..." message (``endpoint_spec`` raises
``ConfigError`` naming the flag). ``kvsync.daemon.config`` adds which flag or env var it came from.
Stateless: any thread may call them.
"""

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

from kvsync.discovery.endpoints import DEFAULT_ENGINE_PORT, parse_endpoint_spec
from kvsync.model import Endpoint


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer in [{low}, {high}]") from None
        if not low <= value <= high:
            raise ValueError(f"expected an integer in [{low}, {high}]")
        return value

    return parse


def seconds(*, allow_zero: bool) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"expected a number of seconds {bound}")
        return value

    return parse


def choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return value

    return parse


def text(raw: str) -> str:
    return raw


def non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a non-empty value")
    return raw.strip()


def optional_port(raw: str) -> int | None:
    return None if raw.strip().lower() in {"", "none"} else int_in(1, 65535)(raw)


def minutes_to_seconds(raw: str) -> str:
    """AIBrix states the idle TTL in minutes; kvsync in seconds."""
    try:
        return repr(float(raw.strip()) * 60)
    except ValueError:
        return raw  # let the seconds parser report it


def medium_weights(raw: str) -> Mapping[str, float]:
    weights: dict[str, float] = {}
    for item in raw.split(","):
        medium, sep, number = item.partition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = math.nan
        if not sep or not medium.strip() or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"expected MEDIUM=WEIGHT,... with weights >= 0, bad item {item!r}")
        weights[medium.strip()] = weight
    return MappingProxyType(weights)


def endpoint_spec(raw: str, *, engine_port: int = DEFAULT_ENGINE_PORT) -> tuple[Endpoint, ...]:
    return tuple(parse_endpoint_spec(raw, engine_port=engine_port))
