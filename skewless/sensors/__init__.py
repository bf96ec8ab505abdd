"""Sensors that trigger streaming micro-batches (Redis Streams, landing folders).

Empty until the streaming path lands (issue 5); the package exists so the layout in
SPEC.md is stable for feature repositories that import from it.
"""
