"""``python -m kvsync`` is the ``kvsync`` command."""

from kvsync.daemon.cli import main

raise SystemExit(main())
