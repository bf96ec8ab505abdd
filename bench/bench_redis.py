"""The Redis every benchmark measures against: `--redis-url`, else the local server on
127.0.0.1:6379 if it answers, else the embedded default started in `state`."""

from __future__ import annotations

from pathlib import Path

import redis


def resolve_redis(url: str | None, state: Path) -> str:
    if url:
        return url
    local = "redis://127.0.0.1:6379/0"
    try:
        if redis.Redis.from_url(local, socket_connect_timeout=0.5).ping():
            return local
    except redis.RedisError:
        pass
    from skewless.storage.embedded_redis import ensure_embedded_redis

    return ensure_embedded_redis(state)
