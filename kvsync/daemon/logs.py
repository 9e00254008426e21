"""The one place that configures logging: structlog for kvsync, the same rendering for stdlib.

I/O edge. ``configure()`` is called once by the CLI on the main thread before any thread starts;
afterwards every module logs through ``structlog.get_logger()``. Lines go to stdout: JSON by
default (one object per line, ``timestamp`` in UTC ISO 8601, ``level``, ``event``), or
human-readable with ``fmt="console"``. Loggers of libraries (kubernetes, urllib3, uvicorn) go
through ``ProcessorFormatter`` with the same processors, so every line has the same shape.

Conventions kept by the callers: event names are snake_case facts (``subscribed``,
``sequence_gap``), data goes in key-values, and nothing is logged at info per message.
Raises nothing.
"""

import logging
import sys
from typing import Final, TextIO

import structlog
from structlog.typing import Processor

LEVELS: Final = ("debug", "info", "warning", "error")

# Library loggers that are chatty at info: one line per HTTP request or connection.
_QUIET_LIBRARIES: Final = ("urllib3", "kubernetes.client.rest", "uvicorn.access")


def _drop_color_message(
    _logger: object, _method: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """uvicorn adds an ANSI-coloured copy of each message as an extra; keep the plain one."""
    event_dict.pop("color_message", None)
    return event_dict


_SHARED: Final[list[Processor]] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure(
    *,
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    cache: bool = True,
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stdout) at ``level`` in ``fmt``.

    ``cache=False`` keeps loggers reconfigurable, which tests that capture logs need.
    """
    out = sys.stdout if stream is None else stream
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    renderer: Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        tracebacks: list[Processor] = []
    else:
        renderer = structlog.processors.JSONRenderer()
        tracebacks = [structlog.processors.dict_tracebacks]
    structlog.configure(
        processors=[*_SHARED, structlog.processors.StackInfoRenderer(), *tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=cache,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                *_SHARED,
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(),
                _drop_color_message,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))
