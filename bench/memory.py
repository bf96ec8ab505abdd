"""Training-set memory: the engine's estimate against the measured peak, on the demo's data.

    python bench/memory.py [--users 20000] [--days 30] [--budget-mb 0]

Generates the card-fraud example's data for `--users` (about 1.5 transactions a user a day;
the labels are every transaction, as the training-set asset uses them), writes the offline
partitions `fraud_model:v1` reads, then builds its training set in a fresh process per engine
and measures the process's peak RSS growth during the call (VmHWM, reset before it). Same-run baseline:
a plain Polars `join_asof` of the same labels with the largest row group's rows (what any
point-in-time join must at least hold). Last line one JSON object:

- `estimate_mb`: the in-memory engine's estimated peak (`client.training_set.estimated_peak`)
- `memory_growth_mb`, `memory_s`: the in-memory engine's measured growth and time;
  `ratio_estimate`: estimate / measured (1.0 is a perfect estimate; above 1 is conservative)
- `partitioned_growth_mb`, `partitioned_s`: the out-of-core engine with `--budget-mb`
  (default: a quarter of the estimate, to force several buckets)
- `raw_join_asof_growth_mb`: the baseline, and `ratio_raw`: ours (in memory) / raw
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
mode = sys.argv[2]
import polars as pl
from examples.card_fraud import features
from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig, home
from skewless.repository import load_repository

repo = load_repository(features)
store = FeatureStore(repo, StoreConfig(str(home() / "offline"), None, "", ""))
service = repo.service("fraud_model:v1")
labels = service.labels.scan().collect()
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
# the peak of the call alone: reset the high-water mark (loading labels can peak higher)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
t0 = time.perf_counter()
if mode == "raw":
    group = repo.resolve(service.refs[0])[0]
    rows = store.offline.scan(group).collect()
    keys = group.entity.key_columns
    left = labels.select(*keys, pl.col("ts").dt.cast_time_unit("us")).sort("ts")
    out = left.join_asof(rows.sort("event_timestamp"), left_on="ts", right_on="event_timestamp", by=keys)
    stats = {}
else:
    out = store.get_training_dataset(labels, service="fraud_model:v1", timestamp_column="ts", engine=mode)
    s = store.last_training_stats
    stats = {"engine": s.engine, "buckets": s.buckets, "estimate": s.estimated_bytes}
took = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({"growth": peak - before, "s": round(took, 2), "rows": out.height, **stats}))
"""


def prepare(work: Path, users: int, days: int) -> None:
    """The demo's data and the offline partitions of fraud_model:v1's groups, without Dagster."""
    from datetime import UTC, datetime, timedelta

    import polars as pl

    from examples.card_fraud import data

    end = data.default_end()
    data.generate(work / "data", users=users, merchants=300, days=days, end=end, seed=7)
    from examples.card_fraud import features
    from skewless.compute.rows import compute_rows
    from skewless.repository import load_repository
    from skewless.storage.offline import OfflineStore

    repo = load_repository(features)
    from skewless.storage.keys import ensure_key_ring

    store = OfflineStore(work / "offline")
    store.state_dir = str(work)  # the example's pii features are encrypted at rest
    ensure_key_ring(work)
    service = repo.service("fraud_model:v1")
    groups = {repo.resolve(r)[0].ref: repo.resolve(r)[0] for r in service.refs}
    start = datetime.combine(end - timedelta(days=days), datetime.min.time(), UTC)
    stop = datetime.combine(end, datetime.min.time(), UTC)
    for group in groups.values():
        rows = compute_rows(group, start, stop).with_columns(pl.col("event_timestamp").dt.date().alias("__d"))
        for d in range(days):
            day = (start + timedelta(days=d)).date()
            store.write_partition(group, day, rows.filter(pl.col("__d") == day).drop("__d"))


def child(work: Path, mode: str, budget_mb: float | None) -> dict:
    env = {**os.environ, "SKEWLESS_HOME": str(work)}
    if budget_mb:
        env["SKEWLESS_PIT_MEMORY_MB"] = str(budget_mb)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), mode], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--budget-mb", type=float, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="skewless-memory-"))
    os.environ["SKEWLESS_HOME"] = str(work)
    sys.path.insert(0, str(ROOT))
    prepare(work, args.users, args.days)
    mb = 1024 * 1024
    memory = child(work, "memory", None)
    budget = args.budget_mb or max(64.0, memory["estimate"] / mb / 4)
    partitioned = child(work, "partitioned", budget)
    raw = child(work, "raw", None)
    result = {
        "users": args.users,
        "label_rows": memory["rows"],
        "estimate_mb": round(memory["estimate"] / mb),
        "memory_growth_mb": round(memory["growth"] / mb),
        "memory_s": memory["s"],
        "ratio_estimate": round(memory["estimate"] / max(memory["growth"], 1), 2),
        "partitioned_budget_mb": round(budget),
        "partitioned_buckets": partitioned["buckets"],
        "partitioned_growth_mb": round(partitioned["growth"] / mb),
        "partitioned_s": partitioned["s"],
        "raw_join_asof_growth_mb": round(raw["growth"] / mb),
        "raw_s": raw["s"],
        "ratio_raw": round(memory["growth"] / max(raw["growth"], 1), 2),
    }
    print(
        f"[memory] {args.users:,} users, {result['label_rows']:,} labels: "
        f"estimate {result['estimate_mb']} MB, "
        f"measured {result['memory_growth_mb']} MB (x{result['ratio_estimate']}); partitioned with "
        f"{result['partitioned_budget_mb']} MB budget: {result['partitioned_growth_mb']} MB; "
        f"raw join_asof of one group {result['raw_join_asof_growth_mb']} MB",
        flush=True,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
