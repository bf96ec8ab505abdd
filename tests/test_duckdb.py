"""DuckDB where it is strongest: SQL over the offline store, and tables/queries as sources."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from skewless import (
    DuckDBSource,
    Entity,
    Feature,
    FeatureGroup,
    FeatureRepository,
    FeatureService,
    FeatureStore,
    FileSource,
)
from skewless.config import StoreConfig
from skewless.errors import RequestError, SourceDataError
from skewless.feature_assets.definitions import build_definitions
from skewless.storage.offline import OfflineStore
from tests.helpers import START, expected_rows, make_events, materialize_days, small_repo


def make_duckdb(path: Path, events: pl.DataFrame) -> None:
    with duckdb.connect(str(path)) as conn:
        conn.register("events_frame", events.to_arrow())
        conn.execute("CREATE TABLE events AS SELECT * FROM events_frame")
        conn.execute("CREATE TABLE naive AS SELECT user_id, ts::TIMESTAMP AS ts, amount FROM events_frame")


def duck_group(db: Path, **source_args) -> FeatureGroup:
    args = {"table": "events", "created_timestamp_field": "created"} | source_args
    source = DuckDBSource("duck_events", "ts", database=str(db), start_date=START, **args)
    return FeatureGroup(
        "duck_stats",
        Entity("user", {"user_id": pl.Int64}),
        source,
        [Feature("amount", pl.Float64), Feature("channel", pl.String)],
    )


def test_duckdb_table_source_materializes_like_parquet(tmp_path: Path, store_config: StoreConfig) -> None:
    events = make_events()
    db = tmp_path / "warehouse.duckdb"
    make_duckdb(db, events)
    group = duck_group(db)
    with dg.instance_for_test() as instance:
        assert materialize_days(
            FeatureRepository([group]), store_config, instance, START, "2026-03-02"
        ).success
    written = pl.read_parquet(OfflineStore(store_config.offline_root).files(group)[1])
    expected = expected_rows(events, "2026-03-02").select(written.columns)
    assert written.equals(expected)


def test_duckdb_query_source_and_errors(tmp_path: Path) -> None:
    events = make_events()
    db = tmp_path / "warehouse.duckdb"
    make_duckdb(db, events)
    group = duck_group(db, table=None, query="SELECT * FROM events WHERE channel = 'pos'")
    start = datetime(2026, 3, 1, tzinfo=UTC)
    frame = group.source.scan(start, datetime(2026, 3, 2, tzinfo=UTC)).collect()
    assert (
        frame.height
        == events.filter(
            (pl.col("channel") == "pos") & (pl.col("ts") < datetime(2026, 3, 2, tzinfo=UTC))
        ).height
    )
    naive = duck_group(db, table="naive", created_timestamp_field=None)
    with pytest.raises(SourceDataError, match="source 'duck_events': column 'ts' is timezone-naive"):
        naive.source.scan().collect()
    missing = duck_group(tmp_path / "nope.duckdb")
    with pytest.raises(SourceDataError, match=r"DuckDB database .* does not exist"):
        missing.source.scan()
    broken = duck_group(db, table=None, query="SELECT * FROM no_such_table")
    with pytest.raises(SourceDataError, match="source 'duck_events': DuckDB query failed"):
        broken.source.scan()


def test_sql_over_the_offline_store(tmp_path: Path, store_config: StoreConfig) -> None:
    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, store_config, instance, START, "2026-03-04").success
    store = FeatureStore(repo, store_config)
    counts = store.sql("SELECT date, count(*) AS n FROM user_stats_v1 GROUP BY date ORDER BY date")
    assert counts["n"].to_list() == [
        expected_rows(events, d).height for d in ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]
    ]
    latest = store.sql("SELECT sum(amount) AS s FROM user_stats WHERE date = DATE '2026-03-02'")
    assert latest["s"][0] == pytest.approx(expected_rows(events, "2026-03-02")["amount"].sum())
    with pytest.raises(RequestError, match="SQL query failed"):
        store.sql("SELECT * FROM nope")


def test_empty_group_has_an_empty_typed_view(tmp_path: Path, store_config: StoreConfig) -> None:
    store = FeatureStore(small_repo(tmp_path / "data"), store_config)
    empty = store.sql("SELECT * FROM user_stats_v1")
    assert empty.height == 0
    assert empty.schema["amount"] == pl.Float64 and "date" in empty.columns


TRAINING_SET = dg.AssetKey(["training_sets", "model_v1_training_set"])


def test_training_set_and_views_assets(tmp_path: Path, store_config: StoreConfig) -> None:
    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    labels = events.select("user_id", "ts", (pl.col("amount") > 60).alias("label"))
    labels.write_parquet(tmp_path / "labels.parquet")
    label_source = FileSource("labels", tmp_path / "labels.parquet", "ts", start_date=START)
    service = FeatureService("model", ["user_stats:v1:amount"], labels=label_source, owner="team:test")
    repo = FeatureRepository(repo.groups, services=[service])
    defs = build_definitions(repo, store_config)
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, store_config, instance, START, "2026-03-04").success
        for job in ("training_sets", "sql_views"):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance).success
        mat = instance.get_latest_materialization_event(TRAINING_SET)
        assert mat.asset_materialization.metadata["dagster/row_count"].value == events.height
    training = pl.read_parquet(OfflineStore(store_config.offline_root).training_set_path("model", 1))
    assert training.height == events.height
    client = FeatureStore(repo, store_config).get_training_dataset(
        labels, service="model:v1", timestamp_column="ts"
    )
    assert training.equals(client)
    # the views asset wrote a DuckDB file anyone can open
    with duckdb.connect(str(Path(store_config.state_dir) / "offline.duckdb"), read_only=True) as conn:
        assert conn.sql("SELECT count(*) FROM user_stats_v1").fetchall()[0][0] == events.height
    spec = {s.key: s for s in defs.resolve_all_asset_specs()}[TRAINING_SET]
    assert dg.AssetKey(["features", "user_stats_v1_offline"]) in {d.asset_key for d in spec.deps}
