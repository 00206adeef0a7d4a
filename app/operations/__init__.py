"""Operating a server: Prometheus metrics, the event stream, the dashboard."""
