"""Command line entry point (placeholder until the daemon lands: prints what exists)."""

import sys

from kvsync import __version__


def main(argv: list[str] | None = None) -> int:
    """Run the ``kvsync`` command; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        sys.stdout.write(f"kvsync {__version__}\n")
        return 0
    sys.stderr.write("kvsync: the daemon and the demo are not built yet (see README, Status)\n")
    return 2
