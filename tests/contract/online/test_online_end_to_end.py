"""End to end on every online backend: a small repository materialized through Dagster
(`dg.materialize` of its offline and online assets), read back through the client and the
HTTP server; on a cluster the online asset's writes are batched per slot."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from starlette.testclient import TestClient

from skewless import FeatureStore
from skewless.compute.rows import latest_per_entity
from skewless.config import StoreConfig
from skewless.serving.http import create_app
from skewless.storage.offline import OfflineStore
from tests.helpers import make_events, materialize_days, small_repo

DAYS = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def test_materialize_then_serve(backend, config: StoreConfig, tmp_path: Path, instance) -> None:
    events = make_events(n=1500, users=400)
    repo = small_repo(tmp_path / "data", events)
    result = materialize_days(repo, config, instance, DAYS[0], DAYS[-1])
    assert result.success
    group = repo.groups[0]
    offline = OfflineStore(config.offline_root)
    expected = latest_per_entity(group, offline.scan(group, None, None).collect()).sort("user_id")
    users = expected["user_id"].to_list()
    assert len(users) > 300
    store = FeatureStore(repo, config)
    try:
        refs = ["user_stats:v1:amount", "user_stats:v1:channel", "user_stats:v1:online"]
        got = store.get_online_features({"user_id": [*users, 10**6]}, features=refs)
        assert got["amount"].to_list() == [*expected["amount"].to_list(), 0.0]
        assert got["channel"].to_list() == [*expected["channel"].to_list(), "none"]
        if backend.name == "cluster":
            assert store.last_online_stats["nodes"] == 3
        online_meta = [
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey(["online", "user_stats_v1_online"])
        ]
        assert sum(m["keys_written"].value for m in online_meta) >= len(users)
        # the HTTP server on the same store: lookups inline on one Redis, in threads on a cluster
        client = TestClient(create_app(store))
        response = client.post(
            "/features/online", json={"service": "svc:v1", "entities": {"user_id": users[:300]}}
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["channel"] for r in results] == expected["channel"].to_list()[:300]
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        store.close()
