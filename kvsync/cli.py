"""The ``kvsync`` command: ``serve``, ``demo``, ``--version``. I/O edge, main thread.

Maps outcomes to exit codes: 0 graceful stop, 1 a component crashed, 2 bad configuration
(one line on stderr), 128 + signum when a second signal forces the exit.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from kvsync import __version__, config
from kvsync.errors import ConfigError

EXIT_CONFIG = 2


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvsync", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kvsync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="{serve,demo}")
    commands.add_parser("serve", help="run the daemon", add_help=False)
    commands.add_parser("demo", help="run a simulated fleet with the daemon", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kvsync`` command; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parsed, rest = _top_parser().parse_known_args(args[:1])
    if parsed.command == "serve":
        try:
            config.load([*args[1:], *rest], os.environ)
        except ConfigError as exc:
            sys.stderr.write(f"kvsync: {exc}\n")
            return EXIT_CONFIG
        sys.stderr.write("kvsync: the daemon is not built yet\n")
        return EXIT_CONFIG
    _top_parser().print_help(sys.stderr)
    return EXIT_CONFIG
