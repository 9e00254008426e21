"""Ingest: the ingest thread, its sockets, and the per-endpoint sequence state machine."""
