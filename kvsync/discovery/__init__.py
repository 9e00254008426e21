"""Discovery: where endpoints come from (static specs and files, Kubernetes pods), as a Source."""
