"""The Kubernetes discovery source: pods → endpoints, one list/watch loop per namespace."""
