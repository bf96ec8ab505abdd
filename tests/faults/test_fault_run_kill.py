"""Drill: the run process SIGKILLed in the middle of an offline backfill.

A child process materializes six daily partitions in one run (a Python script calling
Dagster's `materialize`, on a sqlite instance); the test SIGKILLs it the moment the first
partition's temp file appears. Then: every partition file a reader can see is complete and
readable (half files are dot-named `.tmp`s no reader's glob matches), and the retried run
completes — no `*.tmp` left anywhere, row counts and rows equal to an independent Polars
computation from the source.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl

from skewless.config import StoreConfig
from skewless.repository import load_repository
from skewless.storage.offline import OfflineStore
from tests.faults.drills import TIMEOUT_S, store_env, write_repo
from tests.helpers import expected_rows, make_events

FIRST, LAST = "2026-03-01", "2026-03-06"
DAYS = [f"2026-03-0{d}" for d in range(1, 7)]

RUN = """
import sys, warnings
warnings.filterwarnings("ignore")
import dagster as dg
from skewless.feature_assets.definitions import build_definitions
from skewless.repository import load_repository

defs = build_definitions(load_repository(sys.argv[1]))
with dg.DagsterInstance.get() as instance:
    result = dg.materialize(
        [*defs.assets, *(defs.asset_checks or [])],
        selection=dg.AssetSelection.key_prefixes(["features"]),
        resources=defs.resources,
        instance=instance,
        tags={"dagster/asset_partition_range_start": sys.argv[2],
              "dagster/asset_partition_range_end": sys.argv[3]},
        raise_on_error=False,
    )
sys.exit(0 if result.success else 1)
"""


def offline_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(partition files a reader's `*.parquet` glob sees, temp files)."""
    visible, temps = [], []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.endswith(".tmp"):
                temps.append(Path(folder) / name)
            elif name.endswith(".parquet"):
                visible.append(Path(folder) / name)
    return visible, temps


def test_run_killed_mid_backfill_leaves_no_partial_file_and_retry_completes(
    tmp_path: Path, store_config: StoreConfig
) -> None:
    events = make_events(n=1_200_000, days=6, users=50_000, seed=21)
    repo_path = write_repo(tmp_path / "repo", events)
    env = store_env(store_config, tmp_path / "home")
    root = Path(store_config.offline_root) / "user_stats"
    command = [sys.executable, "-c", RUN, str(repo_path), FIRST, LAST]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: tuple[list[Path], list[Path]] = ([], [])
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline and child.poll() is None:
            seen = offline_files(root)
            if seen[0] or seen[1]:  # the write phase has begun: kill the whole process now
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        output = child.communicate(timeout=TIMEOUT_S)[0].decode()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the run was not killed mid-write:\n{output[-3000:]}"

    group = load_repository(repo_path).groups[0]
    offline = OfflineStore(store_config.offline_root)
    visible, temps = offline_files(root)
    assert len(visible) < len(DAYS), "every partition was written before the kill"
    # what readers see is whole: each visible partition holds exactly its day's rows
    for path in visible:
        day = path.parent.name.removeprefix("date=")
        assert pl.read_parquet(path).equals(expected_rows(events, day)), path
    print(f"killed with {len(visible)} partitions written and {len(temps)} temp files left")
    assert all(t.name.startswith(".") for t in temps), temps  # never matched by `*.parquet`
    assert offline.scan(group).collect().height == sum(pl.read_parquet(p).height for p in visible)

    retry = subprocess.run(command, env=env, capture_output=True, timeout=TIMEOUT_S)
    assert retry.returncode == 0, retry.stdout.decode()[-3000:] + retry.stderr.decode()[-3000:]
    visible, temps = offline_files(root)
    assert temps == [], temps
    assert sorted(p.parent.name for p in visible) == [f"date={d}" for d in DAYS]
    counts = events.group_by(pl.col("ts").dt.date().alias("day")).len()
    for day in DAYS:
        frame = pl.read_parquet(offline.partition_path(group, date.fromisoformat(day)))
        want = counts.filter(pl.col("day") == date.fromisoformat(day))["len"].item()
        assert frame.height == want, day
        assert frame.equals(expected_rows(events, day)), day
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        statuses = [run.status for run in instance.get_runs()]
    assert dg.DagsterRunStatus.SUCCESS in statuses
