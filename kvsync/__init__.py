"""kvsync: keeps a prefix index of what every vLLM pod's KV cache holds, and answers routers."""

__version__ = "0.1.0"
