"""Audit: kvsync's answers against what the engines reported for the requests routed on them."""
