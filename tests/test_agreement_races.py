"""Issue 12 item 20: the online/offline agreement check under racing writers (window groups).

Pushes reach Redis before the offline store; the check must compare only what the offline
store covers, so a newer pushed event is no alarm, while a wrong value still fails."""

from __future__ import annotations

from datetime import timedelta
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
