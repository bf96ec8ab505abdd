"""Choosing and configuring an online backend: the factory, the URL schemes, the embedded
default started explicitly, ACL credentials in the URL (a private redis-server)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from examples.scale.servers import RedisProcess, free_ports, server_binary
from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.config import StoreConfig
from skewless.errors import OnlineStoreError
from skewless.storage.embedded_redis import embedded_redis_running, stop_embedded_redis
from skewless.storage.online import (
    ONLINE_BACKENDS,
    EmbeddedRedisOnlineStore,
    RedisClusterOnlineStore,
    RedisOnlineStore,
    open_online_store,
    parse_cluster_url,
    redact,
)

user = Entity("user", {"user_id": pl.Int64})
GROUP = FeatureGroup(
    "g", user, FileSource("events", "/tmp/unused.parquet", "ts"), [Feature("value", pl.Int64)]
)


def test_the_factory_picks_a_backend_by_url_scheme(tmp_path: Path) -> None:
    def opened(url: str | None) -> object:
        return open_online_store(StoreConfig("", url, str(tmp_path), "skt"))

    assert type(opened(None)) is EmbeddedRedisOnlineStore
    for url in ("redis://h:1/0", "rediss://u:p@h:1/0", "unix:///tmp/r.sock?db=0"):
        assert type(opened(url)) is RedisOnlineStore
    for url in ("redis+cluster://a:1,b:2", "rediss+cluster://u:p@a:1"):
        assert type(opened(url)) is RedisClusterOnlineStore
    with pytest.raises(OnlineStoreError, match="unknown scheme 'memcached'"):
        opened("memcached://h:1")
    assert set(ONLINE_BACKENDS) >= {"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"}


def test_cluster_urls_parse_nodes_and_credentials() -> None:
    parsed = parse_cluster_url("rediss+cluster://app:s%40cret@10.0.0.1:7001,10.0.0.2:7002,[::1]:7003/?x=1")
    assert parsed == {
        "nodes": [("10.0.0.1", 7001), ("10.0.0.2", 7002), ("::1", 7003)],
        "username": "app",
        "password": "s@cret",
        "ssl": True,
    }
    assert parse_cluster_url("redis+cluster://h:1")["username"] is None
    for bad in ("redis+cluster://", "redis+cluster://host-without-port", "redis://h:1"):
        with pytest.raises(OnlineStoreError):
            parse_cluster_url(bad)
    assert "s3cret" not in redact("redis+cluster://u:s3cret@a:1,b:2")


def test_the_embedded_default_starts_only_when_used(tmp_path: Path) -> None:
    """Building the store or a client, and reading `.url`, start nothing: a client built for
    offline work (training sets, SQL) must not start a Redis as a side effect."""
    state = tmp_path / "state"
    config = StoreConfig(str(tmp_path / "offline"), None, str(state), "skt")
    client = FeatureStore(FeatureRepository([GROUP]), config)
    store = client.online
    assert isinstance(store, EmbeddedRedisOnlineStore)
    assert "not started" in store.url and not store.started
    assert not embedded_redis_running(state)
    try:
        url = store.start()
        assert url.startswith("unix://") and store.url == url and embedded_redis_running(state)
        store.ping()
    finally:
        client.close()
        stop_embedded_redis(state)


def test_acl_user_and_password_in_the_url(tmp_path: Path) -> None:
    binary = server_binary()
    if binary is None:
        pytest.skip("no redis-server binary for a private server")
    server = RedisProcess(binary, tmp_path / "redis", free_ports(1)[0])
    server.start()
    try:
        with server.client() as admin:
            admin.execute_command("ACL", "SETUSER", "feature-app", "on", ">s3cret", "~skt:*", "+@all")
        url = f"redis://feature-app:s3cret@127.0.0.1:{server.port}/0"
        store = open_online_store(StoreConfig("", url, str(tmp_path), "skt"))
        when = datetime(2026, 1, 1, tzinfo=UTC)
        frame = pl.DataFrame(
            {"user_id": [1, 2], "value": [5, 6], "event_timestamp": [when, when]},
            schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
        )
        assert store.write_latest(GROUP, frame)["written"] == 2
        assert store.read(GROUP, frame.select("user_id"))["value"].to_list() == [5, 6]
        store.close()
        wrong = open_online_store(StoreConfig("", url.replace("s3cret", "nope"), str(tmp_path), "skt"))
        with pytest.raises(Exception) as failure:
            wrong.read(GROUP, frame.select("user_id"))
        assert "nope" not in str(failure.value)
        wrong.close()
    finally:
        server.stop()
