"""Missing partitions are an error, not stale values (issue 12 item 2).

Real Parquet sources and offline stores, real Dagster runs: some days are materialized, some
are not, and a training set (client and asset) or an online write over the unmaterialized
days must say which group and which days, or warn with the same words when allowed.
"""

from __future__ import annotations

import dataclasses
import warnings
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import FeatureRepository, FeatureService, FileSource
from skewless.asset_keys import offline_path, online_path
from skewless.client.feature_store import FeatureStore
from skewless.compute.coverage import MissingPartitionsWarning, day_ranges, required_days
from skewless.config import StoreConfig
from skewless.errors import MissingPartitionsError
from skewless.feature_assets.definitions import build_definitions
from tests.helpers import START, make_events, small_repo

DAY0 = date.fromisoformat(START)


def day(k: int) -> str:
    return (DAY0 + timedelta(days=k)).isoformat()


def materialize(
    repo: FeatureRepository,
    config: StoreConfig,
    instance: dg.DagsterInstance,
    first: str,
    last: str,
    which: str = "offline",
    run_config: dict | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """One run of the offline (or online) asset over `first..last`, no checks."""
    defs = build_definitions(repo, config, checks=False)
    group = repo.groups[0]
    key = dg.AssetKey(offline_path(group) if which == "offline" else online_path(group))
    return dg.materialize(
        list(defs.assets or []),
        selection=dg.AssetSelection.assets(key),
        resources=defs.resources,
        instance=instance,
        run_config=run_config,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        raise_on_error=raise_on_error,
    )


def labels_on(events: pl.DataFrame, *days: int) -> pl.DataFrame:
    """Label rows at the events' own times on the given days (day offsets from START)."""
    wanted = [DAY0 + timedelta(days=k) for k in days]
    return events.filter(pl.col("ts").dt.date().is_in(wanted)).select("user_id", "ts")


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as inst:
        yield inst


def test_day_ranges_compress_consecutive_days() -> None:
    days = [DAY0 + timedelta(days=k) for k in (0, 1, 2, 4, 6, 7)]
    assert day_ranges(days) == "2026-03-01..2026-03-03, 2026-03-05, 2026-03-07..2026-03-08"


def test_training_set_over_unmaterialized_days_names_group_and_days(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    events = make_events(n=600, days=6)
    repo = small_repo(tmp_path / "data", events)
    materialize(repo, store_config, instance, day(0), day(1))
    materialize(repo, store_config, instance, day(4), day(4))
    store = FeatureStore(repo, store_config)
    labels = labels_on(events, 2, 3, 5)
    with pytest.raises(MissingPartitionsError) as caught:
        store.get_training_dataset(labels, service="svc:v1", timestamp_column="ts")
    message = str(caught.value)
    assert "feature group 'user_stats:v1'" in message
    assert "3 day partitions" in message
    assert "2026-03-03..2026-03-04, 2026-03-06" in message
    assert "allow_missing=True" in message and "features/" in message
    # allowed: the same text as a warning, and the (stale) values from what is stored
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        frame = store.get_training_dataset(
            labels, service="svc:v1", timestamp_column="ts", allow_missing=True
        )
    ours = [w for w in seen if issubclass(w.category, MissingPartitionsWarning)]
    assert [str(w.message) for w in ours] == [message]
    assert ours[0].filename == __file__  # points at the caller
    assert frame.height == labels.height
    # once the days are materialized the same request succeeds, with no warning
    materialize(repo, store_config, instance, day(2), day(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingPartitionsWarning)
        fresh = store.get_training_dataset(labels, service="svc:v1", timestamp_column="ts")
    assert not fresh.equals(frame)  # the error stood between the caller and stale values


def test_days_without_source_events_and_before_the_start_never_count(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    events = make_events(n=600, days=6)
    # a gap in the source (day 2) and partitions starting two days before the first event
    events = events.filter(pl.col("ts").dt.date() != DAY0 + timedelta(days=2))
    base = small_repo(tmp_path / "data", events)
    early = FileSource(
        "events",
        tmp_path / "data" / "events.parquet",
        "ts",
        created_timestamp_field="created",
        start_date=(DAY0 - timedelta(days=2)).isoformat(),
    )
    group = base.groups[0]
    group = dataclasses.replace(group, source=early)
    repo = FeatureRepository(groups=[group], services=[FeatureService("svc", ["user_stats:v1:amount"])])
    materialize(repo, store_config, instance, day(0), day(1))
    materialize(repo, store_config, instance, day(3), day(5))
    labels = labels_on(events, 3, 5)
    assert (DAY0 - timedelta(days=1)) in required_days(group, [DAY0 + timedelta(days=5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingPartitionsWarning)
        frame = FeatureStore(repo, store_config).get_training_dataset(
            labels, service="svc:v1", timestamp_column="ts"
        )
    assert frame.height == labels.height


def test_ttl_limits_the_days_that_count(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    events = make_events(n=600, days=6)
    repo = small_repo(tmp_path / "data", events, ttl="1d")
    materialize(repo, store_config, instance, day(5), day(5))
    store = FeatureStore(repo, store_config)
    # labels on day 5 with a 1-day TTL read days 4 and 5: only day 4 is missing
    with pytest.raises(MissingPartitionsError, match=r"1 day partition the label .* 2026-03-05\. "):
        store.get_training_dataset(labels_on(events, 5), service="svc:v1", timestamp_column="ts")
    materialize(repo, store_config, instance, day(4), day(4))
    assert store.get_training_dataset(labels_on(events, 5), service="svc:v1", timestamp_column="ts").height


def test_training_set_asset_fails_naming_the_days(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    events = make_events(n=600, days=4)
    base = small_repo(tmp_path / "data", events)
    labels = labels_on(events, 0, 3)
    labels.write_parquet(tmp_path / "labels.parquet")
    label_source = FileSource("labels", tmp_path / "labels.parquet", "ts", start_date=START)
    service = FeatureService("model", ["user_stats:v1:amount"], labels=label_source)
    repo = FeatureRepository(base.groups, services=[service])
    materialize(repo, store_config, instance, day(0), day(1))
    job = build_definitions(repo, store_config).resolve_job_def("training_sets")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = failure.step_failure_data.error.to_string()
    assert "MissingPartitionsError" in text and "'user_stats:v1'" in text
    assert "2026-03-03..2026-03-04" in text


def test_online_asset_fails_on_unmaterialized_partitions_unless_allowed(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance, online_store
) -> None:
    events = make_events(n=600, days=4)
    repo = small_repo(tmp_path / "data", events)
    group = repo.groups[0]
    materialize(repo, store_config, instance, day(0), day(1))
    result = materialize(repo, store_config, instance, day(1), day(3), which="online", raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    text = failure.step_failure_data.error.to_string()
    assert "'user_stats:v1'" in text and "2026-03-03..2026-03-04" in text and "allow_missing" in text
    assert sum(1 for _ in online_store.keys(group)) == 0  # nothing written
    op = build_definitions(repo, store_config).resolve_assets_def(dg.AssetKey(online_path(group))).op.name
    with pytest.warns(MissingPartitionsWarning, match="2026-03-03..2026-03-04"):
        allowed = materialize(
            repo,
            store_config,
            instance,
            day(1),
            day(3),
            which="online",
            run_config={"ops": {op: {"config": {"allow_missing": True}}}},
        )
    assert allowed.success
    assert sum(1 for _ in online_store.keys(group)) > 0
    logged = [
        e
        for e in instance.all_logs(allowed.run_id)
        if e.level == 30 and "2026-03-03..2026-03-04" in (e.user_message or "")
    ]
    assert logged


def test_unreadable_source_counts_only_gaps_between_stored_partitions(
    tmp_path: Path, store_config: StoreConfig, instance: dg.DagsterInstance
) -> None:
    events = make_events(n=600, days=4)
    repo = small_repo(tmp_path / "data", events)
    materialize(repo, store_config, instance, day(0), day(0))
    materialize(repo, store_config, instance, day(2), day(2))
    (tmp_path / "data" / "events.parquet").unlink()  # e.g. a copy of the offline store elsewhere
    store = FeatureStore(repo, store_config)
    with pytest.raises(MissingPartitionsError, match=r"could not be read to check\): 2026-03-02\. "):
        # day 3 (after the last stored partition) cannot be judged, day 1 is a gap
        store.get_training_dataset(labels_on(events, 2, 3), service="svc:v1", timestamp_column="ts")
