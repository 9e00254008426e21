"""The Redis backend (``--index-backend redis``): layout, function library, writer, reader."""
