"""Parity as test assertions, and the pytest plugin."""
