"""Online store faults: racing writers, a Redis restart between requests, versions side by side."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from skewless import Entity, Feature, FeatureGroup, FeatureRepository, FeatureStore, FileSource
from skewless.config import StoreConfig
from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from skewless.storage.online import OnlineStore

user = Entity("user", {"user_id": pl.Int64})
source = FileSource("events", "/tmp/unused.parquet", "ts")
GROUP = FeatureGroup("race", user, source, [Feature("value", pl.Int64)])

WRITER = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime, timedelta
    import polars as pl
    from skewless import Entity, Feature, FeatureGroup, FileSource
    from skewless.config import StoreConfig
    from skewless.storage.online import open_online_store

    url, prefix, parity = sys.argv[1], sys.argv[2], int(sys.argv[3])
    group = FeatureGroup("race", Entity("user", {"user_id": pl.Int64}),
                         FileSource("events", "/tmp/unused.parquet", "ts"), [Feature("value", pl.Int64)])
    store = open_online_store(StoreConfig("", url, "/tmp", prefix))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # each writer owns the odd or even versions 0..399 and writes them in a shuffled order
    import random
    versions = [v for v in range(400) if v % 2 == parity]
    random.Random(parity).shuffle(versions)
    for v in versions:
        when = base + timedelta(seconds=v)
        frame = pl.DataFrame({"user_id": list(range(50)), "event_timestamp": [when] * 50, "value": [v] * 50},
                             schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")})
        store.write_latest(group, frame)
    """
)


def test_racing_writers_keep_the_newest(store_config: StoreConfig, online_store: OnlineStore) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, store_config.redis_url, store_config.key_prefix, str(p)]
        )
        for p in (0, 1)
    ]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    got = online_store.read(GROUP, pl.DataFrame({"user_id": list(range(50))}))
    assert got["value"].to_list() == [399] * 50
    assert (
        got["event_timestamp"].to_list() == [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=399)] * 50
    )


def test_client_survives_a_redis_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    url = ensure_embedded_redis(state)
    store = FeatureStore(
        FeatureRepository([GROUP]), StoreConfig(str(tmp_path), url, str(state), "sktest:restart")
    )
    frame = pl.DataFrame(
        {"user_id": [1], "event_timestamp": [datetime(2026, 1, 1, tzinfo=UTC)], "value": [7]},
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    try:
        store.online.write_latest(GROUP, frame)
        assert store.get_online_features([{"user_id": 1}], features=["race:v1:value"])["value"].to_list() == [
            7
        ]
        stop_embedded_redis(state)
        ensure_embedded_redis(state)  # same socket; the append-only file brings the value back
        assert store.get_online_features([{"user_id": 1}], features=["race:v1:value"])["value"].to_list() == [
            7
        ]
    finally:
        store.close()
        stop_embedded_redis(state)


def test_two_versions_are_served_side_by_side(store_config: StoreConfig) -> None:
    v1 = FeatureGroup("score", user, source, [Feature("value", pl.Int64)], version=1)
    v2 = FeatureGroup(
        "score", user, source, [Feature("value", pl.Int64), Feature("extra", pl.String)], version=2
    )
    store = FeatureStore(FeatureRepository([v1, v2]), store_config)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    store.online.write_latest(v1, pl.DataFrame({"user_id": [1], "event_timestamp": [t], "value": [10]}))
    store.online.write_latest(
        v2, pl.DataFrame({"user_id": [1], "event_timestamp": [t], "value": [20], "extra": ["x"]})
    )
    got = store.get_online_features(
        {"user_id": [1]},
        features=["score:v1:value", "score:v2:value", "score:v2:extra"],
        full_feature_names=True,
    )
    assert got.row(0) == (1, 10, 20, "x")
    assert len(list(store.online.keys(v1))) == 1 and len(list(store.online.keys(v2))) == 1
    store.close()
