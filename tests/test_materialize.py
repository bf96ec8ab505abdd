"""Materializing real assets into a real Dagster instance: Parquet partitions and Redis values."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless.compute.rows import latest_per_entity
from skewless.config import StoreConfig
from skewless.storage.offline import OfflineStore
from skewless.storage.online import OnlineStore
from tests.helpers import expected_rows, make_events, materialize_days, small_repo

DAYS = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"]


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def online_values(store: OnlineStore, group, users: list[int]) -> pl.DataFrame:
    return store.read(group, pl.DataFrame({"user_id": users}))


def test_partitions_hold_exactly_the_independent_computation(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    result = materialize_days(repo, store_config, instance, DAYS[0], DAYS[-1])
    assert result.success
    group = repo.groups[0]
    offline = OfflineStore(store_config.offline_root)
    assert [d.isoformat() for d in offline.partitions(group)] == DAYS
    for day in DAYS:
        path = offline.partition_path(group, __import__("datetime").date.fromisoformat(day))
        assert path == Path(store_config.offline_root) / "user_stats" / "v1" / f"date={day}" / "data.parquet"
        written = pl.read_parquet(path)
        assert written.equals(expected_rows(events, day)), day
    # metadata the UI shows
    mats = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["features", "user_stats_v1_offline"])
    ]
    assert sorted(m.partition for m in mats) == DAYS
    # each partition reports its own rows; the run's total is shared
    by_day = {m.partition: m.metadata for m in mats}
    for day in DAYS:
        assert by_day[day]["dagster/row_count"].value == expected_rows(events, day).height
        assert by_day[day]["run_rows"].value == events.height
    schema = mats[0].metadata["dagster/column_schema"].schema
    assert [c.name for c in schema.columns][:3] == ["user_id", "event_timestamp", "created_timestamp"]


def test_redis_holds_exactly_the_latest_row_per_entity(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, online_store: OnlineStore
) -> None:
    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    assert materialize_days(repo, store_config, instance, DAYS[0], DAYS[-1]).success
    group = repo.groups[0]
    expected = (
        pl.concat([expected_rows(events, d) for d in DAYS])
        .sort(["event_timestamp", "created_timestamp"])
        .group_by("user_id")
        .last()
        .sort("user_id")
    )
    users = expected["user_id"].to_list()
    assert sum(1 for _ in online_store.keys(group)) == len(users)
    got = online_values(online_store, group, users)
    assert got.select(expected.columns[1:]).equals(expected.drop("user_id"))


def test_second_run_changes_nothing(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, online_store: OnlineStore
) -> None:
    repo = small_repo(tmp_path / "data")
    group = repo.groups[0]
    assert materialize_days(repo, store_config, instance, DAYS[0], DAYS[-1]).success
    offline = OfflineStore(store_config.offline_root)
    before_files = {p: p.read_bytes() for p in offline.files(group)}
    keys = sorted(online_store.keys(group))
    before_values = online_store.client.mget(keys)
    assert materialize_days(repo, store_config, instance, DAYS[0], DAYS[-1]).success
    assert {p: p.read_bytes() for p in offline.files(group)} == before_files
    assert sorted(online_store.keys(group)) == keys
    assert online_store.client.mget(keys) == before_values
    leftovers = [p for p in Path(store_config.offline_root).rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_old_partition_rerun_keeps_newer_online_values(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, online_store: OnlineStore
) -> None:
    events = make_events()
    repo = small_repo(tmp_path / "data", events)
    group = repo.groups[0]
    assert materialize_days(repo, store_config, instance, DAYS[0], DAYS[-1]).success
    keys = sorted(online_store.keys(group))
    newest = online_store.client.mget(keys)
    # re-run the first day alone: its rows are older for every entity seen later
    result = materialize_days(repo, store_config, instance, DAYS[0], DAYS[0])
    assert result.success
    assert online_store.client.mget(keys) == newest
    online_mat = next(
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(["online", "user_stats_v1_online"])
    )
    first_day = pl.read_parquet(OfflineStore(store_config.offline_root).files(group)[0])
    entities = latest_per_entity(group, first_day).height
    assert (
        online_mat.metadata["kept_newer_value"].value + online_mat.metadata["keys_written"].value == entities
    )
    assert online_mat.metadata["kept_newer_value"].value > 0


def test_one_partition_run_writes_only_that_day(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    repo = small_repo(tmp_path / "data")
    assert materialize_days(repo, store_config, instance, DAYS[2], DAYS[2]).success
    offline = OfflineStore(store_config.offline_root)
    assert [d.isoformat() for d in offline.partitions(repo.groups[0])] == [DAYS[2]]
    runs = instance.get_runs()
    assert len(runs) == 1  # a range is one run (single-run backfill policy)


def partition_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, day: str) -> dict:
    """The metadata of a partition's latest materialization, as the instance stored it."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(key, asset_partitions=[day]), limit=1)
    return records.records[0].asset_materialization.metadata


def test_single_run_backfill_reports_each_partitions_own_figures(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, online_store: OnlineStore
) -> None:
    """A 3-day range in one run: every partition's materialization event (read back from the
    instance) carries that day's rows, entities and null rates, not the run's (issue 12 item 5)."""
    events = make_events(n=600, days=3)
    # uneven days (so a run-wide figure cannot pass for a day's) and some null amounts
    events = events.filter(~((pl.col("ts").dt.day() == 2) & (pl.col("user_id") % 3 == 0)))
    events = events.with_columns(
        pl.when(pl.col("user_id") % 5 == 0).then(None).otherwise(pl.col("amount")).alias("amount")
    )
    repo = small_repo(tmp_path / "data", events)
    group = repo.groups[0]
    days = DAYS[:3]
    assert materialize_days(repo, store_config, instance, days[0], days[-1]).success
    offline = OfflineStore(store_config.offline_root)
    offline_rows, latest_from_day = {}, {}
    stored = {d: pl.read_parquet(offline.partition_path(group, date.fromisoformat(d))) for d in days}
    every = pl.concat(stored.values())
    latest = latest_per_entity(group, every)
    for day in days:
        meta = partition_metadata(instance, dg.AssetKey(["features", "user_stats_v1_offline"]), day)
        part = stored[day]
        offline_rows[day] = meta["dagster/row_count"].value
        assert offline_rows[day] == part.height
        assert meta["entities"].value == part["user_id"].n_unique()
        assert meta["null_rate/amount"].value == pytest.approx(part["amount"].null_count() / part.height)
        assert meta["null_rate/channel"].value == 0.0
        assert meta["run_rows"].value == every.height
        online = partition_metadata(instance, dg.AssetKey(["online", "user_stats_v1_online"]), day)
        sent = latest.filter(pl.col("event_timestamp").dt.date().cast(pl.String) == day).height
        latest_from_day[day] = online["dagster/row_count"].value
        assert latest_from_day[day] == sent
        assert online["keys_written"].value == sent  # a fresh prefix: nothing newer stored
        assert online["rows_read"].value == part.height
        assert online["run_entities"].value == latest.height
    assert len(set(offline_rows.values())) == 3, offline_rows
    assert len(set(latest_from_day.values())) > 1, latest_from_day
    assert sum(latest_from_day.values()) == latest.height
