"""What the data-quality checks cost: one daily partition materialized with and without them.

    python bench/checks.py [--size medium|small] [--repeat 3] [--redis-url URL]

Generates the card-fraud example (medium: 100,000 users, as in the other benchmarks'
medium size, 10,000 merchants, 14 days, about 150,000 transactions a day; small: 20,000
users, 30,000 a day), materializes the first 13 days once (so drift has a reference),
then times the `daily_features` job for the last day, the way the daily schedule runs it,
in one process and one Dagster instance:

- with checks: every group version's schema (pandera), the example's expectations (Great
  Expectations, on merchant_risk), drift (merchant_risk, user_last_txn:v2), and the online
  checks (freshness, online/offline agreement on 200 sampled entities);
- without: the same definitions built with `build_definitions(..., checks=False)`.

Runs alternate (with, without, with, ...) after one warm-up run of each, so both pay the
same caches; the figure is the median (and the median of each round's ratio). Great
Expectations' import (seconds, once per process) is paid in the warm-up and reported
separately as `ge_import_s`. The last line is JSON with `overhead_ratio` = with / without
(the issue's target: at most 1.2).

Much of the checks' cost at small sizes is Dagster's own: each check result is a few
event-log writes, about 50 ms on this VM's disk-backed SQLite instance (half that with the
instance on tmpfs), whatever the check computes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_redis import resolve_redis  # noqa: E402  (bench/ is the script's folder)

SIZES = {"small": (20_000, 2_000), "medium": (100_000, 10_000)}  # users, merchants


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="medium")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--redis-url", default=os.environ.get("SKEWLESS_REDIS_URL"))
    args = parser.parse_args()
    users, merchants = SIZES[args.size]

    work = Path(tempfile.mkdtemp(prefix="skewless-bench-checks-"))
    os.environ["SKEWLESS_HOME"] = str(work)
    os.environ["DAGSTER_HOME"] = str(work / "dagster")
    (work / "dagster").mkdir(parents=True)
    (work / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)

    from examples.card_fraud import data, features
    from skewless.config import StoreConfig
    from skewless.feature_assets.definitions import build_definitions
    from skewless.repository import load_repository
    from skewless.storage.online import open_online_store

    url = resolve_redis(args.redis_url, work / "redis")
    config = StoreConfig(str(work / "offline"), url, str(work), f"skbench:{uuid.uuid4().hex[:8]}")
    end = data.default_end()
    counts = data.generate(work / "data", users=users, merchants=merchants, days=14, end=end, seed=7)
    from skewless.storage.keys import ensure_key_ring

    ensure_key_ring(work)  # the example's pii features are encrypted at rest
    print(
        f"[checks] {args.size}: {counts['transactions']} transactions over 14 days, Redis {url}", flush=True
    )
    repo = load_repository(features)
    with_checks = build_definitions(repo, config)
    without = build_definitions(repo, config, checks=False)
    instance = dg.DagsterInstance.get()
    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    first, last = end - timedelta(days=14), end - timedelta(days=1)

    steps: dict[str, dict[str, float]] = {}

    def run(defs: dg.Definitions, tags: dict[str, str] | None = None, partition: str | None = None) -> float:
        started = time.perf_counter()
        result = defs.resolve_job_def("daily_features").execute_in_process(
            instance=instance, run_config=quiet, tags=tags, partition_key=partition, raise_on_error=False
        )
        elapsed = time.perf_counter() - started
        if not result.success:
            raise SystemExit(f"run failed: {[e.message for e in result.all_events if e.is_failure][:3]}")
        label = "with" if defs is with_checks else "without"
        for stat in instance.get_run_step_stats(result.run_id):
            steps.setdefault(stat.step_key, {})[label] = (stat.end_time or 0) - (stat.start_time or 0)
        return elapsed

    history = {
        "dagster/asset_partition_range_start": first.isoformat(),
        "dagster/asset_partition_range_end": (last - timedelta(days=1)).isoformat(),
    }
    run(without, history)
    started = time.perf_counter()
    import great_expectations  # noqa: F401  (the one-time import the first checked run pays)

    ge_import = time.perf_counter() - started
    day = last.isoformat()
    run(with_checks, partition=day)  # warm-up: caches, suites, pandera schemas
    run(without, partition=day)
    timings: dict[str, list[float]] = {"with": [], "without": []}
    for i in range(args.repeat):
        timings["with"].append(run(with_checks, partition=day))
        timings["without"].append(run(without, partition=day))
        print(
            f"[checks] round {i + 1}: with checks {timings['with'][-1]:.2f} s, "
            f"without {timings['without'][-1]:.2f} s",
            flush=True,
        )
    print("[checks] step seconds in the last round (with / without checks):")
    for key, pair in sorted(steps.items()):
        print(f"[checks]   {key:<45} {pair.get('with', 0):6.3f} / {pair.get('without', 0):6.3f}")
    with_s, without_s = statistics.median(timings["with"]), statistics.median(timings["without"])
    result = {
        "size": args.size,
        "transactions": counts["transactions"],
        "partition": day,
        "group_versions": len(repo.groups),
        "with_checks_s": round(with_s, 3),
        "without_checks_s": round(without_s, 3),
        "overhead_ratio": round(with_s / without_s, 3),
        # each round's own ratio, median: robust to the VM drifting between rounds
        "paired_ratio_median": round(
            statistics.median(w / o for w, o in zip(timings["with"], timings["without"], strict=True)), 3
        ),
        "ge_import_s": round(ge_import, 2),
        "repeat": args.repeat,
    }
    open_online_store(config).delete_all()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
