"""Shared fixtures: a real Redis (configured, local, or embedded), temp stores, small repos.

Redis: `SKEWLESS_REDIS_URL` if set; else the server on 127.0.0.1:6379 if it answers; else the
embedded default started in a temp folder. Every test gets its own key prefix and deletes
its keys afterwards; nothing here flushes a database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import redis

from skewless.config import StoreConfig
from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from skewless.storage.online import OnlineStore


def _answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
        ok = bool(client.ping())
        client.close()
        return ok
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("SKEWLESS_REDIS_URL")
    if configured:
        yield configured
        return
    local = "redis://127.0.0.1:6379/0"
    if _answers(local):
        yield local
        return
    state = tmp_path_factory.mktemp("embedded-redis")
    url = ensure_embedded_redis(state)
    yield url
    stop_embedded_redis(state)


@pytest.fixture
def store_config(tmp_path: Path, redis_url: str) -> Iterator[StoreConfig]:
    config = StoreConfig(
        offline_root=str(tmp_path / "offline"),
        redis_url=redis_url,
        state_dir=str(tmp_path / "state"),
        key_prefix=f"sktest:{uuid.uuid4().hex[:12]}",
    )
    yield config
    store = OnlineStore(config.redis_url, config.state_dir, config.key_prefix)
    try:
        store.delete_all()
    finally:
        store.close()


@pytest.fixture
def online_store(store_config: StoreConfig) -> Iterator[OnlineStore]:
    store = OnlineStore(store_config.redis_url, store_config.state_dir, store_config.key_prefix)
    yield store
    store.close()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def write_events(path: Path, frame: pl.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    return path
