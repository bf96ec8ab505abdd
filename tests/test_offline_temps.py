"""Issue 12 item 19: a temp file left by a killed writer does not survive the successful retry."""

from __future__ import annotations

import os
import time
import uuid
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from skewless.config import StoreConfig
from skewless.storage.offline import STALE_TEMP_S, OfflineStore
from tests.helpers import START, materialize_days, small_repo


def plant(folder: Path, name: str, age_s: float) -> Path:
    """A temp file as a writer killed `age_s` seconds ago leaves it."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    temp.write_bytes(b"PAR1 half a file")
    then = time.time() - age_s
    os.utime(temp, (then, then))
    return temp


def test_write_partition_removes_its_own_stale_temps_and_old_foreign_ones(tmp_path: Path) -> None:
    repo = small_repo(tmp_path / "data")
    group = repo.groups[0]
    store = OfflineStore(tmp_path / "offline")
    day = date.fromisoformat(START)
    folder = store.partition_path(group, day).parent
    killed = plant(folder, "data.parquet", age_s=5)  # the killed run, retried a moment later
    old_piece = plant(folder, "piece-run1.parquet", age_s=STALE_TEMP_S + 60)  # a dead micro-batch
    live_piece = plant(folder, "piece-run2.parquet", age_s=1)  # a micro-batch writing right now
    other_day = plant(store.partition_path(group, date(2026, 3, 2)).parent, "data.parquet", age_s=5)
    frame = pl.DataFrame(schema=group.offline_schema())
    store.write_partition(group, day, frame)
    assert store.partition_path(group, day).exists()
    assert not killed.exists() and not old_piece.exists()
    assert live_piece.exists(), "a temp another writer may still be writing is kept"
    assert other_day.exists(), "only the folder being replaced is cleaned"
    assert sorted(p.name for p in folder.iterdir()) == sorted(["data.parquet", live_piece.name])


def test_retried_offline_asset_leaves_no_temp_file(tmp_path: Path, store_config: StoreConfig) -> None:
    repo = small_repo(tmp_path / "data")
    group = repo.groups[0]
    store = OfflineStore(store_config.offline_root)
    day = date.fromisoformat(START)
    killed = plant(store.partition_path(group, day).parent, "data.parquet", age_s=30)
    with dg.instance_for_test() as instance:
        result = materialize_days(repo, store_config, instance, START, START, with_checks=False)
    assert result.success
    assert not killed.exists()
    root = Path(store_config.offline_root)
    assert not list(root.rglob("*.tmp")), list(root.rglob("*.tmp"))
