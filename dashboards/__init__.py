"""Generator of the Grafana dashboards (dashboards/*.json): run dashboards/generate.py."""
