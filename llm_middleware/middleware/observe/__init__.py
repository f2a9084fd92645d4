"""What the middleware reports about the requests it serves: Prometheus metrics and the access log."""
