"""Benchmarks of agent-event-router against a bare Starlette WebSocket and python-socketio.

Not tests: they print figures and never fail a build on timing. Run ``python -m
benchmarks`` (see benchmarks/README.md).
"""
