"""Load: each engine's own view of itself, scraped from vLLM's ``/metrics`` on its HTTP port."""
