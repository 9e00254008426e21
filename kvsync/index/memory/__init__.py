"""The in-memory index backend: ``PrefixIndex`` (with ``_native``) behind its own lock."""
