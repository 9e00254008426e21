"""The ``kvsync`` command: ``serve``, ``demo``, ``--version``. I/O edge, main thread.

Maps outcomes to exit codes: 0 graceful stop, 1 a component crashed, 2 bad configuration
(one line on stderr), 128 + signum when a second signal forces the exit. This is the only place
that reads ``os.environ`` and looks at the filesystem for the in-cluster default.
"""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final

from kvsync import __version__
from kvsync.daemon import config, logs, runtime
from kvsync.errors import ConfigError
from kvsync.sim import demo

EXIT_CONFIG: Final = 2
SERVICE_ACCOUNT: Final = "/var/run/secrets/kubernetes.io/serviceaccount"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvsync",
        description="Prefix index of vLLM pods' KV caches, answering routers over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"kvsync {__version__}")
    parser.add_argument(
        "command",
        choices=["serve", "demo"],
        help="serve: the daemon; demo: "
        "a simulated fleet with the daemon (see `kvsync <command> --help`)",
    )
    return parser  # fmt: skip


def serve(argv: Sequence[str]) -> int:
    """``kvsync serve``: load settings (exit 2 if bad), configure logs, run the daemon."""
    try:
        settings = config.load(argv, os.environ, in_cluster=os.path.isdir(SERVICE_ACCOUNT))
    except ConfigError as exc:
        sys.stderr.write(f"kvsync: {exc}\n")
        return EXIT_CONFIG
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    try:
        return runtime.run(settings)
    except ConfigError as exc:
        sys.stderr.write(f"kvsync: {exc}\n")
        return EXIT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvsync`` command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        command = _top_parser().parse_args(args[:1]).command
    except SystemExit as exc:  # argparse's --help, --version and usage errors
        return EXIT_CONFIG if exc.code not in (0, None) else 0
    if command == "serve":
        return serve(args[1:])
    return demo.main(args[1:])
