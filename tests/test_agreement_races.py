"""Issue 12 item 20: the online/offline agreement check under racing writers (window groups).

Pushes reach Redis before the offline store; the check must compare only what the offline
store covers, so a newer pushed event is no alarm, while a wrong value still fails."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from skewless import FeatureRepository, FeatureStore
from skewless.config import StoreConfig
from skewless.serving.agreement import check_agreement
from tests.test_windows import NOW, batch_materialize, events_frame, window_group


def event(user: int, eid: str, ago: timedelta, amount: float) -> dict:
    return {"user_id": user, "ts": NOW - ago, "eid": eid, "amount": amount, "status": "ok", "merchant": 1}


def test_window_agreement_skips_newer_pushes_and_catches_wrong_values(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    events = [
        event(u, f"e{u}-{i}", timedelta(hours=2 + i), 10.0 * u + i) for u in (1, 2, 3) for i in range(3)
    ]
    events_frame(events).write_parquet(tmp_path / "txns.parquet")
    group = window_group(tmp_path / "txns.parquet")
    store = FeatureStore(FeatureRepository([group]), store_config)
    batch_materialize(store, group)
    store.online.write_events(group, store.offline.scan(group).collect())
    first = check_agreement(store, group)
    assert first.passed and first.values["entities_compared"] == 3, first.description

    # a racing push: an event newer than anything offline for user 1 reaches Redis only
    store.push("txns", events_frame([event(1, "late", timedelta(minutes=5), 99.0)]))
    raced = check_agreement(store, group)
    assert raced.passed, raced.description
    assert raced.values["skipped_newer_online"] == 1 and raced.values["entities_compared"] == 2

    # a genuinely wrong online state: an extra event for user 2, older than its newest offline
    # event (so covered by the offline store), that the offline store never saw
    ghost = _offline_layout(store, group, event(2, "ghost", timedelta(hours=3), 5.0))
    store.online.write_events(group, ghost)
    wrong = check_agreement(store, group)
    assert not wrong.passed
    assert set(wrong.tables["mismatches"]["entity"].to_list()) == {"user_id=2"}
    store.close()


def _offline_layout(store: FeatureStore, group, row: dict) -> pl.DataFrame:
    """One event in the offline event layout (what the online asset feeds `write_events`)."""
    from skewless.compute.rows import transform_rows

    start, end = NOW - timedelta(days=30), NOW + timedelta(days=1)
    return transform_rows(group, events_frame([row]).lazy(), start, end)


def test_row_agreement_of_a_run_skips_entities_whose_latest_is_a_later_runs_partition(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    """Runs of a backfill side by side (BackfillPolicy.multi_run): the run of days 1-2 checks
    while the run of days 3-4 has written its partitions offline but not yet online. Users
    with rows on days 3-4 are that run's to check (skipped, counted); the others are compared,
    and a wrong online value among them still fails the check."""
    import dagster as dg
    import numpy as np

    from skewless.asset_keys import offline_key
    from skewless.feature_assets.definitions import build_definitions
    from tests.helpers import START, materialize_days, small_repo

    start = datetime.fromisoformat(START + "T00:00:00+00:00")
    rows = [(u, start + timedelta(days=d, hours=u)) for u in range(1, 11) for d in (0, 1)]
    rows += [(u, start + timedelta(days=d, hours=u)) for u in range(1, 6) for d in (2, 3)]
    events = pl.DataFrame(
        {
            "user_id": [u for u, _ in rows],
            "ts": [t for _, t in rows],
            "created": [t + timedelta(seconds=1) for _, t in rows],
            "amount": np.arange(len(rows), dtype=np.float64),
            "channel": ["pos"] * len(rows),
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC")},
    )
    repo = small_repo(tmp_path / "data", events)
    (group,) = repo.groups
    with dg.instance_for_test() as instance:
        assert materialize_days(repo, store_config, instance, "2026-03-01", "2026-03-02").success
        defs = build_definitions(repo, store_config)
        later = dg.materialize(  # the other run, offline step done, online step not yet
            [*(defs.assets or [])],
            selection=dg.AssetSelection.assets(offline_key(group)),
            resources=defs.resources,
            instance=instance,
            tags={"dagster/asset_partition_range_start": "2026-03-03",
                  "dagster/asset_partition_range_end": "2026-03-04"},
        )  # fmt: skip
        assert later.success
    store = FeatureStore(repo, store_config)
    days = [start.date(), start.date() + timedelta(days=1)]
    outcome = check_agreement(store, group, days=days)
    assert outcome.passed, outcome.description
    assert outcome.values["skipped_later_partition"] == 5
    assert outcome.values["entities_compared"] == 5
    # a wrong value for a user without later rows is still caught
    wrong = store.offline.scan(group, days[0], days[1]).filter(pl.col("user_id") == 8).collect()
    wrong = wrong.sort("event_timestamp").tail(1).with_columns(pl.lit(-1.0).alias("amount"))
    store.online.write_latest(group, wrong)
    failed = check_agreement(store, group, days=days)
    assert not failed.passed
    assert set(failed.tables["mismatches"]["entity"].to_list()) == {"user_id=8"}
    store.close()
