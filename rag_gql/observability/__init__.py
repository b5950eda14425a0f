"""Logs, request ids, metrics and health checks: what operators see of a running server."""
