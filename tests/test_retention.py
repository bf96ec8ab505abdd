"""Lifecycle: offline partitions past a group's `retention=` are deleted by the scheduled
retention asset (and never rewritten by a backfill); online values expire by TTL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FileSource
from skewless.config import StoreConfig
from skewless.errors import DefinitionError
from skewless.feature_assets.definitions import build_definitions
from skewless.feature_assets.retention import RETENTION_JOB
from skewless.registry.catalog import Registry
from skewless.storage.offline import OfflineStore
from skewless.storage.online import open_online_store
from skewless.storage.online_keys import entity_keys
from tests.helpers import RUN, delete_entity_keys, expected_rows, make_events, materialize_days, small_repo

USER = Entity("user", {"user_id": pl.Int64})
NOW = datetime(2026, 3, 10, 12, tzinfo=UTC)


@pytest.fixture
def quick_config(tmp_path: Path, redis_url: str) -> Iterator[StoreConfig]:
    """`store_config` whose clean-up deletes this test's keys by name, not by SCAN."""
    config = StoreConfig(
        offline_root=str(tmp_path / "offline"),
        redis_url=redis_url,
        state_dir=str(tmp_path / "state"),
        key_prefix=f"sktest:{RUN}:{uuid.uuid4().hex[:8]}",
    )
    yield config
    delete_entity_keys(config, [*small_repo(tmp_path / "keys").groups, _ttl_group(tmp_path)])


def _group(tmp: Path, retention: str | None = "3d") -> FeatureGroup:
    source = FileSource("ev", str(tmp / "ev.parquet"), "ts", start_date="2026-03-01")
    return FeatureGroup("g", USER, source, [Feature("x", pl.Float64)], retention=retention)


def test_retention_is_validated_at_load(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="retention '12h' is shorter than a day"):
        _group(tmp_path, "12h")
    with pytest.raises(DefinitionError, match="expected a positive duration"):
        _group(tmp_path, "forever")
    source = FileSource("w", str(tmp_path / "w.parquet"), "ts", id_field="eid")
    with pytest.raises(DefinitionError, match=r"shorter than its longest window \(30d\)"):
        FeatureGroup("w", USER, source, aggregations=[Aggregation("count", windows=["30d"])], retention="7d")
    assert _group(tmp_path, "90d").retention_period == timedelta(days=90)
    assert (
        Registry(FeatureRepository([_group(tmp_path, "90d")])).group_entry(_group(tmp_path, "90d"))[
            "retention"
        ]
        == "90d"
    )


def test_delete_expired_removes_whole_days_past_retention(tmp_path: Path) -> None:
    group = _group(tmp_path)  # 3 days: at 2026-03-10 12:00 the oldest day kept is 03-07
    store = OfflineStore(tmp_path / "offline")
    frame = pl.DataFrame({"user_id": [1], "x": [1.0]})
    for day in range(1, 11):
        store.write_partition(group, date(2026, 3, day), frame)
    store.write_piece(group, date(2026, 3, 2), "p1", frame)  # pieces go with their day
    assert group.first_retained_day(NOW) == date(2026, 3, 7)
    deleted = store.delete_expired(group, NOW)
    assert deleted == [date(2026, 3, d) for d in range(1, 7)]
    assert store.partitions(group) == [date(2026, 3, d) for d in range(7, 11)]
    assert not list((tmp_path / "offline").rglob("date=2026-03-0[1-6]/*"))
    assert store.delete_expired(group, NOW) == []  # idempotent
    assert store.delete_expired(_group(tmp_path, None), NOW) == []  # no retention: kept forever


def test_the_retention_asset_runs_on_its_schedule_and_backfills_skip_expired_days(
    tmp_path: Path, quick_config: StoreConfig
) -> None:
    events = make_events()
    base = small_repo(tmp_path / "data", events)
    keep = base.groups[0]
    days = [date(2026, 3, 1) + timedelta(days=i) for i in range(4)]
    with dg.instance_for_test() as instance:
        store = OfflineStore(quick_config.offline_root)
        for day in days:  # what a materialization stored months ago
            store.write_partition(keep, day, expected_rows(events, day.isoformat()))
        assert store.partitions(keep) == days
        # the same group version, now with a retention: its history lies months in the past
        old = replace(keep, retention="30d")
        repo = FeatureRepository(groups=[old], services=base.services)
        defs = build_definitions(repo, quick_config)
        assert defs.resolve_job_def(RETENTION_JOB) is not None
        assert any(s.cron_schedule == "0 2 * * *" for s in defs.schedules or [])
        retention = next(a for a in defs.assets or [] if "lifecycle" in a.key.path)  # type: ignore[union-attr]
        result = dg.materialize([retention], resources=defs.resources, instance=instance)
        assert result.success
        assert store.partitions(old) == []
        meta = result.asset_materializations_for_node(retention.node_def.name)[0].metadata
        assert meta["partitions_deleted"].value == 4
        # a backfill of those days writes nothing: deleted history stays deleted
        again = materialize_days(repo, quick_config, instance, "2026-03-01", "2026-03-04", with_checks=False)
        assert again.success
        assert store.partitions(old) == []


def _ttl_group(tmp: Path) -> FeatureGroup:
    return FeatureGroup(
        "t", USER, FileSource("ev", str(tmp / "ev.parquet"), "ts"), [Feature("x", pl.Float64)], ttl="1h"
    )


def test_online_values_expire_with_the_group_ttl(quick_config: StoreConfig, tmp_path: Path) -> None:
    group = _ttl_group(tmp_path)
    online_store = open_online_store(quick_config)
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            "user_id": [1, 2],
            "event_timestamp": [now - timedelta(minutes=30), now - timedelta(hours=2)],
            "x": [1.0, 2.0],
        }
    ).with_columns(pl.col("event_timestamp").dt.cast_time_unit("us"))
    written = online_store.write_latest(group, frame)
    assert written["written"] == 1 and written["expired"] == 1  # already past its TTL: not stored
    key, gone = entity_keys(group, online_store.key_prefix, frame)
    assert not online_store.client.exists(gone)
    remaining_ms = online_store.client.pttl(key)
    # expires at event time + ttl: about 30 minutes from now, enforced by Redis itself
    assert 29 * 60_000 < remaining_ms <= 30 * 60_000 + 5_000
    online_store.close()
