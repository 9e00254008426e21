"""The daemon: settings, wiring and lifecycle, logging, and the ``kvsync`` command."""
