"""Streaming: sensors that trigger micro-batches of pushed events (Redis Streams)."""
