"""Vector embeddings: the Vector type and its checks, point-in-time training sets, the index
asset and its checks, search (filtered, by entity, with features) and pushed embeddings.

Real Parquet files, real Redis, real `materialize()` into a temporary instance.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from skewless import (
    Entity,
    Feature,
    FeatureGroup,
    FeatureRepository,
    FeatureStore,
    FileSource,
    Vector,
    VectorIndex,
)
from skewless.config import StoreConfig
from skewless.errors import DefinitionError, RequestError, TransformationError
from skewless.feature_assets.definitions import build_definitions
from tests.vector_helpers import COUNTRIES, DIM, START, item_events, unit, vector_repo

LAST = "2026-03-03"


def materialize(repo: FeatureRepository, config: StoreConfig, instance: dg.DagsterInstance, **kwargs):
    """Offline and online assets for the three days, then the index asset (with checks)."""
    defs = build_definitions(repo, config)
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    dg.materialize(
        assets,
        selection=dg.AssetSelection.key_prefixes(["features"], ["online"]),
        resources=defs.resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": START, "dagster/asset_partition_range_end": LAST},
    )
    return dg.materialize(
        assets,
        selection=dg.AssetSelection.key_prefixes(["indexes"]),
        resources=defs.resources,
        instance=instance,
        **kwargs,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    """One materialized repository for the module's read-mostly tests (each materialization
    costs seconds): (repo, store, events, instance, index run result, config)."""
    import uuid

    from tests.helpers import RUN, delete_keys

    tmp = tmp_path_factory.mktemp("vectors")
    config = StoreConfig(
        str(tmp / "offline"), redis_url, str(tmp / "state"), f"sktest:vec:{RUN}:{uuid.uuid4().hex[:8]}"
    )
    events = item_events()
    repo = vector_repo(tmp / "data", events)
    with pytest.MonkeyPatch.context() as patch, dg.DagsterInstance.ephemeral() as instance:
        patch.setenv("SKEWLESS_HOME", str(tmp / "home"))
        try:
            result = materialize(repo, config, instance)
            assert result.success
            store = FeatureStore(repo, config)
            yield repo, store, events, instance, result, config
            store.close()
        finally:
            delete_keys(config)


# ------------------------------------------------------------------------- definitions
def test_vector_definition_errors(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="Vector dimension"):
        Vector(0)
    with pytest.raises(DefinitionError, match="metric 'dot'"):
        VectorIndex("embedding", metric="dot")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="min_recall"):
        VectorIndex("embedding", min_recall=1.5)
    (tmp_path / "x.parquet").touch()
    item = Entity("item", {"item_id": pl.Int64})
    source = FileSource("items", tmp_path / "x.parquet", "ts", start_date=START)
    with pytest.raises(DefinitionError, match="names feature 'country', which is not a Vector feature"):
        FeatureGroup(
            "g",
            item,
            source,
            [Feature("e", Vector(4)), Feature("country", pl.String)],
            index=VectorIndex("country"),
        )
    feature = Feature("e", Vector(4, normalized=True))
    assert feature.polars_dtype == pl.Array(pl.Float32, 4) and feature.vector == Vector(4, normalized=True)


# ------------------------------------------------------------------------- checks on data
def test_partition_vector_check_blocks_nan_and_unnormalized(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    events = item_events()
    bad = (
        events.with_row_index("i")
        .with_columns(
            pl.when(pl.col("i") == 5)
            .then(pl.lit([float("nan")] * DIM, dtype=pl.Array(pl.Float32, DIM)))
            .when(pl.col("i") == 9)
            .then(pl.lit([2.0] * DIM, dtype=pl.Array(pl.Float32, DIM)))
            .otherwise(pl.col("embedding"))
            .alias("embedding")
        )
        .drop("i")
    )
    repo = vector_repo(tmp_path / "data", bad)
    defs = build_definitions(repo, store_config)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [*(defs.assets or [])],
            selection=dg.AssetSelection.key_prefixes(["features"]),
            resources=defs.resources,
            instance=instance,
            tags={"dagster/asset_partition_range_start": START, "dagster/asset_partition_range_end": LAST},
            raise_on_error=False,
        )
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["vectors"].passed
    text = checks["vectors"].description or ""
    assert "1 with NaN or infinite values" in text and "1 normalized=True vectors with a norm off 1" in text
    assert not (Path(store_config.offline_root) / "item_embeddings").exists()  # nothing written


def test_list_column_of_wrong_length_names_rows(tmp_path: Path) -> None:
    events = item_events().with_columns(pl.col("embedding").arr.to_list())
    events = events.with_columns(
        pl.when(pl.col("item_id") == 7).then(pl.col("embedding").list.head(3)).otherwise(pl.col("embedding"))
    )
    repo = vector_repo(tmp_path / "data", events)
    from skewless.compute.rows import compute_rows

    with pytest.raises(
        TransformationError, match=r"feature 'embedding' is Vector\(8, normalized=True\) but 3 rows"
    ):
        compute_rows(repo.groups[0], datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC))
    ok = vector_repo(tmp_path / "ok", item_events().with_columns(pl.col("embedding").arr.to_list()))
    rows = compute_rows(ok.groups[0], datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC))
    assert rows.schema["embedding"] == pl.Array(pl.Float32, DIM)


# ------------------------------------------------------------------------- training sets
def test_training_set_returns_embedding_as_of_label_time(built) -> None:
    _, store, events, _, _, _ = built
    rng = np.random.default_rng(11)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    labels = pl.DataFrame(
        {
            "item_id": rng.integers(1, 61, size=200).astype(np.int64),
            "event_timestamp": [start + timedelta(seconds=int(s)) for s in rng.integers(0, 3 * 86400, 200)],
        },
        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")},
    )
    train = store.get_training_dataset(labels, features=["item_embeddings:v1:embedding"])
    expected = (
        labels.with_row_index("r")
        .sort("event_timestamp")
        .join_asof(
            events.sort("ts").select("item_id", "ts", "embedding"),
            left_on="event_timestamp",
            right_on="ts",
            by="item_id",
            strategy="backward",
            check_sortedness=False,
        )
        .sort("r")
    )
    assert train["embedding"].dtype == pl.Array(pl.Float32, DIM)
    assert train["embedding"].to_list() == expected["embedding"].to_list()
    assert train["embedding"].null_count() > 0  # some labels precede every embedding of their item


# ------------------------------------------------------------------------- index asset
def test_index_asset_published_with_checks(built) -> None:
    repo, store, events, instance, result, config = built
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"recall", "embedding_drift", "index_freshness"}
    assert checks["recall"].passed
    assert checks["recall"].metadata["recall"].value >= 0.95
    [mat] = result.get_asset_materialization_events()
    metadata = mat.materialization.metadata
    assert metadata["entities"].value == 60 and metadata["data_version"].value.startswith("60-")
    assert mat.asset_key == dg.AssetKey(["indexes", "item_embeddings_v1_index"])
    # exact search over the latest embeddings agrees with the index at this size
    latest = events.sort("ts").group_by("item_id").last()
    query = latest.filter(pl.col("item_id") == 1)["embedding"].to_numpy()[0]
    matrix = np.asarray(latest["embedding"].to_numpy(), dtype=np.float32)
    exact = latest["item_id"].to_numpy()[np.argsort(1 - matrix @ query)[:5]]
    found = store.search("item_embeddings:v1", query, k=5)
    assert found.columns == ["item_id", "distance"]
    assert found["item_id"].to_list() == exact.tolist()
    assert found["distance"][0] == pytest.approx(0.0, abs=1e-5)
    # a second build compares drift with the first
    again = materialize(repo, config, instance)
    drift = {e.check_name: e for e in again.get_asset_check_evaluations()}["embedding_drift"]
    assert drift.passed and drift.metadata["norm_psi"].value < 0.1


def test_recall_check_fails_on_degraded_index(built, store_config: StoreConfig, tmp_path: Path) -> None:
    # a larger group, so a one-link graph with a beam of one cannot find the true neighbours
    _, store, _, instance, _, _ = built
    events = item_events(n_items=3000, per_item=1, seed=5)
    big = vector_repo(tmp_path / "big", events, index=VectorIndex("embedding", recall_queries=60))
    before = store.index_handle("item_embeddings:v1").sync().n
    config = StoreConfig(
        str(tmp_path / "offline2"), store_config.redis_url, str(tmp_path / "state2"), store_config.key_prefix
    )
    defs = build_definitions(big, config)
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    dg.materialize(
        assets,
        selection=dg.AssetSelection.key_prefixes(["features"]),
        resources=defs.resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": START, "dagster/asset_partition_range_end": LAST},
    )
    degraded = dg.materialize(
        assets,
        selection=dg.AssetSelection.key_prefixes(["indexes"]),
        resources=defs.resources,
        instance=instance,
        run_config={"ops": {"indexes__item_embeddings_v1_index": {"config": {"degrade": True}}}},
        raise_on_error=False,
    )
    assert not degraded.success
    recall = {e.check_name: e for e in degraded.get_asset_check_evaluations()}["recall"]
    assert not recall.passed and recall.metadata["recall"].value < 0.95
    assert "not published" in (recall.description or "")
    assert not (Path(config.offline_root) / "_indexes/item_embeddings/v1/current.json").exists()
    assert before == 60


# ------------------------------------------------------------------------- search
def test_filtered_search_returns_k_when_k_match(built) -> None:
    _, store, events, _, _, _ = built
    latest = events.sort("ts").group_by("item_id").last()
    query = unit(np.ones((1, DIM)))[0]
    for country in COUNTRIES:
        matches = latest.filter(pl.col("country") == country).height
        found = store.search(
            "item_embeddings:v1", query, k=10, filter=pl.col("country") == country, features=["country"]
        )
        assert found.height == min(10, matches)
        assert set(found["country"]) == {country}
        assert found["distance"].is_sorted()
    # fewer matches than k: all of them
    few = store.search("item_embeddings:v1", query, k=10, filter=pl.col("item_id").is_in([3, 4, 5]))
    assert sorted(few["item_id"]) == [3, 4, 5]
    none = store.search("item_embeddings:v1", query, k=10, filter=pl.col("country") == "XX")
    assert none.height == 0
    with pytest.raises(RequestError, match=r"filter names column\(s\) \['colour'\]"):
        store.search("item_embeddings:v1", query, filter=pl.col("colour") == "red")
    with pytest.raises(RequestError, match="has 3 dimensions, the index has 8"):
        store.search("item_embeddings:v1", [1.0, 2.0, 3.0])


def test_search_by_entity_with_features_one_round_trip(built) -> None:
    _, store, _, _, _, _ = built
    found = store.search(
        "item_embeddings:v1", entity={"item_id": 1}, k=5, features=["country", "item_embeddings:v1:embedding"]
    )
    assert found.height == 5 and 1 not in found["item_id"].to_list()
    assert found.columns == ["item_id", "distance", "country", "embedding"]
    assert store.last_online_stats["round_trips"] == 1
    with pytest.raises(RequestError, match="has no embedding in the index"):
        store.search("item_embeddings:v1", entity={"item_id": 999})
    # text search of the catalog still works
    assert "item_embeddings:v1:embedding" in store.search("embedding")["ref"].to_list()


def test_pushed_embedding_searchable_at_once_in_every_process(built) -> None:
    repo, store, _, _, _, config = built
    other = FeatureStore(repo, config)  # another serving process's view of the same stores
    try:
        query = unit(np.random.default_rng(99).standard_normal((1, DIM)))[0]
        other.search("item_embeddings:v1", query, k=3)  # loaded before the push
        now = datetime.now(UTC)
        pushed = pl.DataFrame(
            {
                "item_id": [1000, 2],
                "ts": [now, now],
                "embedding": np.stack([query, -query]),
                "country": ["FR", "DE"],
            },
            schema_overrides={"ts": pl.Datetime("us", "UTC"), "embedding": pl.Array(pl.Float32, DIM)},
        )
        store.push("items", pushed)
        for client in (store, other):
            top = client.search("item_embeddings:v1", query, k=3, features=["country"])
            assert top["item_id"][0] == 1000 and top["distance"][0] == pytest.approx(0.0, abs=1e-5)
            assert top["country"][0] == "FR"
            # item 2 was replaced by the opposite vector: farthest now, never near
            assert 2 not in client.search("item_embeddings:v1", query, k=50)["item_id"].to_list()
            far = client.search("item_embeddings:v1", -query, k=1, filter=pl.col("country") == "DE")
            assert far["item_id"].to_list() == [2]
        # remove: a pushed null embedding takes the entity out of the index
        gone = pushed.head(1).with_columns(
            pl.lit(None, dtype=pl.Array(pl.Float32, DIM)).alias("embedding"),
            pl.lit(now + timedelta(seconds=1)).alias("ts"),
        )
        store.push("items", gone)
        assert 1000 not in other.search("item_embeddings:v1", query, k=5)["item_id"].to_list()
        # an older push does not replace a newer vector (the same rule as the Redis write guard)
        old = pushed.tail(1).with_columns(
            pl.lit(now - timedelta(days=30)).alias("ts"),
            pl.lit(query.tolist(), dtype=pl.Array(pl.Float32, DIM)).alias("embedding"),
        )
        store.push("items", old)
        assert 2 not in other.search("item_embeddings:v1", query, k=5)["item_id"].to_list()
        # a bad vector is refused at the door, naming the check
        nan = pushed.head(1).with_columns(
            pl.lit([float("nan")] * DIM, dtype=pl.Array(pl.Float32, DIM)).alias("embedding")
        )
        with pytest.raises(RequestError, match="NaN or infinite"):
            store.push("items", nan)
    finally:
        other.close()


# ------------------------------------------------------------------------- HTTP
def test_http_search_with_roles(
    tmp_path: Path, store_config: StoreConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from skewless.serving.http import AccessPolicy, create_app

    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path / "home"))
    repo = vector_repo(tmp_path / "data")
    with dg.DagsterInstance.ephemeral() as instance:
        assert materialize(repo, store_config, instance).success
    store = FeatureStore(repo, store_config)
    try:
        policy = AccessPolicy.from_json(
            '{"keys": {"r": "reader", "n": "nobody"}, "roles": {"reader": {"groups": ["item_embeddings:v1"],'
            ' "push": ["items"]}, "nobody": {"services": [], "groups": []}}}',
            repo,
        )
        client = TestClient(create_app(store, policy))
        query = unit(np.ones((1, DIM)))[0].tolist()
        body = {"group": "item_embeddings:v1", "vector": query, "k": 4, "filter": {"country": ["FR", "DE"]}}
        assert client.post("/features/search", json=body).status_code == 401
        assert client.post("/features/search", json=body, headers={"X-API-Key": "n"}).status_code == 403
        ok = client.post(
            "/features/search", json={**body, "features": ["country"]}, headers={"X-API-Key": "r"}
        )
        assert ok.status_code == 200, ok.text
        results = ok.json()["results"]
        assert len(results) == 4 and {r["country"] for r in results} <= {"FR", "DE"}
        assert [r["distance"] for r in results] == sorted(r["distance"] for r in results)
        by_entity = client.post(
            "/features/search",
            json={"group": "item_embeddings:v1", "entity": {"item_id": 3}, "k": 2},
            headers={"X-API-Key": "r"},
        )
        assert by_entity.status_code == 200 and len(by_entity.json()["results"]) == 2
        # a vector pushed over HTTP (JSON lists) is searchable at once
        now = datetime.now(UTC).isoformat()
        pushed = client.post(
            "/push",
            json={
                "source": "items",
                "rows": [{"item_id": 500, "ts": now, "embedding": query, "country": "FR"}],
            },
            headers={"X-API-Key": "r"},
        )
        assert pushed.status_code == 200, pushed.text
        top = client.post("/features/search", json={**body, "k": 1}, headers={"X-API-Key": "r"}).json()
        assert top["results"][0]["item_id"] == 500
        bad = client.post(
            "/features/search",
            json={"group": "item_embeddings:v1", "vector": [1.0]},
            headers={"X-API-Key": "r"},
        )
        assert bad.status_code == 422 and "has 1 dimensions" in bad.json()["error"]
        missing = client.post(
            "/features/search", json={"group": "nope:v1", "vector": query}, headers={"X-API-Key": "r"}
        )
        assert missing.status_code in (403, 404)
        assert (
            client.post(
                "/features/search", json={"group": "item_embeddings:v1"}, headers={"X-API-Key": "r"}
            ).status_code
            == 400
        )
    finally:
        store.close()


def test_stream_micro_batch_updates_index(tmp_path: Path, store_config: StoreConfig) -> None:
    """The stream path (push with direct=False, then the sensor's micro-batch) updates the
    index like a direct push; an index built before any data is empty, then searchable."""
    from skewless.sensors.microbatch import apply_rows
    from skewless.vectors import index_store

    repo = vector_repo(tmp_path / "data", item_events().head(0), stream=True)
    group = repo.groups[0]
    store = FeatureStore(repo, store_config)
    try:
        built = index_store.build(store.offline, group)
        index_store.save(store.offline, group, built)
        index_store.publish(store.offline, group, built)
        query = unit(np.ones((1, DIM)))[0]
        assert store.search("item_embeddings:v1", query, k=3).height == 0
        rows = pl.DataFrame(
            {"item_id": [41, 42], "ts": [datetime.now(UTC)] * 2, "embedding": np.stack([query, -query])},
            schema_overrides={"ts": pl.Datetime("us", "UTC"), "embedding": pl.Array(pl.Float32, DIM)},
        ).with_columns(pl.lit("FR").alias("country"))
        store.push("items", rows, direct=False)
        assert store.search("item_embeddings:v1", query, k=3).height == 0  # not applied yet
        apply_rows(repo, store.offline, store.online, "items", rows)
        found = store.search("item_embeddings:v1", query, k=3, features=["country"])
        assert found["item_id"].to_list() == [41, 42] and found["country"].to_list() == ["FR", "FR"]
    finally:
        store.close()
