"""The prefix index: the ``IndexBackend`` seam, its values, block keys, and the backends."""
