"""The demo's checks step: the checks of the run, a bad delivery blocked, served-vector skew.

Kept apart from `demo.py` so each step reads on its own. The bad delivery is purpose-made:
the merchant-risk source file is replaced by a copy whose last day has out-of-range scores
and a missing category, the day is re-materialized (and blocked), and the original file is
put back, so the demo stays repeatable and `make ui` shows the blocked run next to the
successful ones.
"""

from __future__ import annotations

import hashlib
import shutil
from datetime import date
from typing import Any

import polars as pl


def print_check_summary(defs: Any, instance: Any) -> dict[str, int]:
    """Latest result of every asset check, one line per asset."""
    keys = list(defs.resolve_asset_graph().asset_check_keys)
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    by_asset: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    shown = {"SUCCEEDED": "ok", "FAILED": "FAIL", "EXECUTION_FAILED": "ERROR", "PLANNED": "not run"}
    for key, record in sorted(records.items(), key=lambda kv: kv[0].to_user_string()):
        status = record.status.value
        counts[status] = counts.get(status, 0) + 1
        by_asset.setdefault(key.asset_key.to_user_string(), []).append(
            f"{key.name} {shown.get(status, status)}"
        )
    for asset, checks in by_asset.items():
        print(f"   {asset:<34} {', '.join(checks)}")
    return counts


def block_bad_delivery(
    defs: Any, instance: Any, store: Any, repo: Any, data_dir: Any, day: date
) -> dict[str, Any]:
    from skewless.asset_keys import offline_key, online_key

    group = repo.group("merchant_risk", 1)
    source = data_dir / "merchant_risk.parquet"
    backup = source.with_suffix(".parquet.orig")
    partition = store.offline.key_of(store.offline.partition_path(group, day))
    before_file = hashlib.sha256(store.offline.read_bytes(partition) or b"").hexdigest()
    merchants = pl.DataFrame({"merchant_id": [1, 2, 3]})
    before_online = store.get_online_features(
        merchants, features=["merchant_risk:v1:risk_score"], output="dicts"
    )
    shutil.copyfile(source, backup)
    try:
        scores = pl.read_parquet(source)
        on_day = pl.col("scored_at").dt.date() == day
        bad = scores.with_columns(
            pl.when(on_day & (pl.col("merchant_id") <= 5))
            .then(pl.lit(1.7))
            .otherwise(pl.col("risk_score"))
            .alias("risk_score"),
            pl.when(on_day & (pl.col("merchant_id") == 9))
            .then(None)
            .otherwise(pl.col("category"))
            .alias("category"),
        )
        bad.write_parquet(source)
        result = defs.resolve_job_def("daily_features").execute_in_process(
            instance=instance,
            partition_key=day.isoformat(),
            asset_selection=[offline_key(group), online_key(group)],
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            tags={"skewless/demo": "bad-delivery"},
        )
    finally:
        shutil.move(backup, source)
    failed = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.event_specific_data.passed
    ]
    after_file = hashlib.sha256(store.offline.read_bytes(partition) or b"").hexdigest()
    after_online = store.get_online_features(
        merchants, features=["merchant_risk:v1:risk_score"], output="dicts"
    )
    online_ran = any(
        e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key == online_key(group)
        for e in result.all_events
    )
    return {
        "run_failed": not result.success,
        "failed_checks": [f.check_name for f in failed],
        "descriptions": [f.description for f in failed],
        "partition_unchanged": before_file == after_file,
        "online_unchanged": before_online == after_online and not online_ran,
        "run_id": result.run_id,
    }


def log_and_check_skew(defs: Any, instance: Any, store: Any, entities: pl.DataFrame) -> dict[str, Any]:
    """Serve the entities by service with the log on, flush it, run the skew check."""
    store.monitor.log_rate = 1.0
    for batch in entities.iter_slices(100):
        store.get_online_features(batch, service="fraud_model:v1")
    store.monitor.flush()
    store.monitor.log_rate = 0.0
    result = defs.resolve_job_def("serving_logs").execute_in_process(
        instance=instance, run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    )
    checks = [
        e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    latency = store.monitor.latency_summary()
    return {"success": result.success, "checks": checks, "latency": latency}
