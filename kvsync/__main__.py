"""``python -m kvsync`` is the ``kvsync`` command."""

from kvsync.cli import main

raise SystemExit(main())
