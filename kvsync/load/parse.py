"""vLLM's ``/metrics`` text → the load of each engine behind it. Pure.

``MetricsReader().read(body)`` returns ``{rank: EngineLoad}`` (rank None: a pod that labels no
engine) or raises ``LoadError`` for a body that is not vLLM's metrics. One reader per pod, kept
from scrape to scrape: it remembers where each family was and which series it has parsed.
``parse_engine_loads(body)`` reads one body with a fresh reader.

A vLLM ``/metrics`` is 40-100 kB (two dozen histograms with their buckets, process and HTTP
metrics) of which kvsync needs five to nine sample lines per engine, and it is read hundreds of
times a second, so (BENCHMARKS.md, ``## Load``):

- **Selecting.** Each figure's lines are found with ``bytes.find`` on its sample name (C), in the
  order of ``names.SAMPLE_NAMES``: an older name only when the preferred one is absent, and V0's
  hit-rate gauge only when the V1 counters are. The text format keeps a family's lines together
  ("all lines for a given metric must be provided as one single group"), so the search starts
  near where the family was in the pod's previous body, steps back to the group's first line and
  reads the group to its end; a name found absent is looked for again only every
  ``ABSENT_RECHECK`` reads.
- **Parsing.** Every series line (name and labels) is parsed by prometheus-client's text parser
  the first time the reader meets it, which also checks the line. The parser spends about 12 µs
  per line, nearly all of it on the name and labels, and between two scrapes of a pod only the
  values change: a line whose text up to its last space is a series the reader has parsed
  has that series' name and labels, and its value is the last field, read with ``float`` as the
  parser reads it. Any other line (new labels, a timestamp, a value ``float`` refuses) goes
  through the parser again.
"""

import math
from collections.abc import Iterator
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from kvsync.errors import LoadError, LoadReason
from kvsync.load.names import ENGINE_LABEL, SAMPLE_NAMES, Figure
from kvsync.load.values import EngineLoad

ABSENT_RECHECK: Final = 30  # reads between two searches for a name a pod did not expose
MAX_SERIES: Final = 1024  # series remembered per reader (a pod has about 10); past it, forget
_SLACK: Final = 4096  # bytes before a family's last position where its search starts
# A character that may follow a sample name: labels, or the space before the value.
_NAME_ENDS: Final = frozenset(b"{ ")

_FIELD_OF: Final = {
    Figure.RUNNING: "running",
    Figure.WAITING: "waiting",
    Figure.KV_CACHE_USAGE: "kv_cache_usage",
    Figure.PREFIX_QUERIES: "prefix_queries",
    Figure.PREFIX_HITS: "prefix_hits",
    Figure.PREFIX_HIT_RATE: "prefix_hit_rate",
}
_FIGURE_BY_NAME: Final = {name: figure for figure, names in SAMPLE_NAMES.items() for name in names}
# Without these the body is not a vLLM engine's metrics.
_REQUIRED: Final = (Figure.RUNNING, Figure.WAITING)
_ROWS: Final = tuple(
    (figure, tuple(name.encode() for name in names)) for figure, names in SAMPLE_NAMES.items()
)


def _is_sample_of(line: bytes, name: bytes) -> bool:
    return line.startswith(name) and len(line) > len(name) and line[len(name)] in _NAME_ENDS


def _find_sample(body: bytes, name: bytes, origin: int) -> int:
    """Offset of the first sample line of ``name`` that starts at or after ``origin``, or -1."""
    if origin == 0 and _is_sample_of(body[: len(name) + 1], name):
        return 0
    needle = b"\n" + name
    at = max(origin - 1, 0)
    while (found := body.find(needle, at)) >= 0:
        start = found + 1
        end = body.find(b"\n", start)
        if _is_sample_of(body[start : end if end >= 0 else len(body)], name):
            return start
        at = start  # a lookalike (vllm:num_requests_running_total): look further
    return -1


class MetricsReader:
    """Reads one pod's ``/metrics`` bodies, one after the other (see the module docstring)."""

    def __init__(self, *, absent_recheck: int = ABSENT_RECHECK) -> None:
        self._absent_recheck = absent_recheck
        self._where: dict[bytes, int] = {}  # family name -> offset of its group last time
        self._absent: dict[bytes, int] = {}  # name -> reads left before looking for it again
        self._series: dict[bytes, tuple[str, int | None]] = {}  # series text -> field, rank

    def read(self, body: bytes) -> dict[int | None, EngineLoad]:
        """Loads by engine rank; ``LoadError`` if the body is not vLLM's metrics."""
        figures: dict[int | None, dict[str, float]] = {}
        found_counters = False
        for figure, names in _ROWS:
            if figure is Figure.PREFIX_HIT_RATE and found_counters:
                continue  # V0's gauge: only where the V1 counters are not
            lines = self._select(body, names)
            if lines and figure is Figure.PREFIX_QUERIES:
                found_counters = True
            for line in lines:
                field, rank, value = self._sample(line)
                figures.setdefault(rank, {})[field] = value
        if not figures:
            raise LoadError(LoadReason.NOT_VLLM, "no vllm:num_requests_* sample in the body")
        loads: dict[int | None, EngineLoad] = {}
        for rank, values in figures.items():
            if not all(_FIELD_OF[figure] in values for figure in _REQUIRED):
                raise LoadError(
                    LoadReason.NOT_VLLM, f"engine {rank}: no vllm:num_requests_running/waiting"
                )
            loads[rank] = EngineLoad(**values)
        return loads

    # -- selecting ------------------------------------------------------------------------

    def _select(self, body: bytes, names: tuple[bytes, ...]) -> list[bytes]:
        """The lines of the first of ``names`` the body has (one family's group). A name that
        was absent while a later one of its row was there is skipped for a while."""
        missing: list[bytes] = []
        for name in names:
            wait = self._absent.get(name)
            if wait:
                self._absent[name] = wait - 1
                continue
            lines = list(self._group(body, name))
            if lines:
                for absent in missing:
                    self._absent[absent] = self._absent_recheck
                self._absent.pop(name, None)
                return lines
            missing.append(name)
        return []

    def _group(self, body: bytes, name: bytes) -> Iterator[bytes]:
        hint = self._where.get(name)
        start = -1
        for origin in (0,) if hint is None else (max(0, hint - _SLACK), 0):
            start = _find_sample(body, name, origin)
            if start >= 0:
                break
        if start < 0:
            self._where.pop(name, None)
            return
        start = self._step_back(body, name, start)
        self._where[name] = start
        while start < len(body):
            end = body.find(b"\n", start)
            if end < 0:
                end = len(body)
            line = body[start:end].rstrip(b"\r")
            if not _is_sample_of(line, name):
                return  # the group ended
            yield line
            start = end + 1

    @staticmethod
    def _step_back(body: bytes, name: bytes, start: int) -> int:
        """From a sample line of ``name`` back to the first line of its group."""
        while start > 0:
            previous = body.rfind(b"\n", 0, start - 1) + 1
            if not _is_sample_of(body[previous : start - 1].rstrip(b"\r"), name):
                break
            start = previous
        return start

    # -- parsing --------------------------------------------------------------------------

    def _sample(self, line: bytes) -> tuple[str, int | None, float]:
        series, _, value_text = line.rpartition(b" ")
        known = self._series.get(series)
        if known is not None:
            try:
                value = float(value_text)
            except ValueError:
                pass  # the parser says what is wrong with it
            else:
                return known[0], known[1], _checked(value, line)
        field, rank, value = _parse_line(line)
        if len(self._series) >= MAX_SERIES:
            self._series.clear()
        self._series[series] = (field, rank)
        return field, rank, value


def _parse_line(line: bytes) -> tuple[str, int | None, float]:
    """One sample line through prometheus-client's parser: (field, rank, value)."""
    try:
        families = list(text_string_to_metric_families(line.decode()))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:  # the parser's errors
        raise LoadError(LoadReason.UNPARSABLE, f"metrics text: {exc}") from None
    samples = [sample for family in families for sample in family.samples]
    if len(samples) != 1 or samples[0].name not in _FIGURE_BY_NAME:
        raise LoadError(LoadReason.UNPARSABLE, f"not one vLLM sample: {line[:200]!r}")
    sample = samples[0]
    field = _FIELD_OF[_FIGURE_BY_NAME[sample.name]]
    return field, _rank(sample.labels.get(ENGINE_LABEL)), _checked(sample.value, line)


def _checked(value: float, line: bytes) -> float:
    if not math.isfinite(value) or value < 0:
        raise LoadError(LoadReason.BAD_VALUE, f"{line[:200]!r}")
    return value


def _rank(label: str | None) -> int | None:
    if label is None:
        return None
    if not label.isdigit() or len(label) > 6:
        raise LoadError(LoadReason.BAD_VALUE, f"engine label {label!r} is not a rank")
    return int(label)


def parse_engine_loads(body: bytes) -> dict[int | None, EngineLoad]:
    """Loads by engine rank from one whole ``/metrics`` body (a fresh ``MetricsReader``)."""
    return MetricsReader().read(body)
