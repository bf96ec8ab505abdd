"""`skewless demo`: the example end to end on the embedded default.

Generates the card-fraud data, materializes every group version through Dagster on the
instance in the state folder (so `make ui` shows the runs), builds a training set from the
`fraud_model:v1` service and reads online features back. Idempotent: a second run rewrites
the same partitions and leaves the same values.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from skewless import progress
from skewless.config import StoreConfig, home


def prepare_dagster_home(state: Path | None = None) -> Path:
    """Point DAGSTER_HOME at the state folder unless the user chose one, with the instance
    settings `make ui` uses (run monitoring and retries: `skewless.sensors.instance`)."""
    from skewless.sensors.instance import write_instance_yaml

    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str((state or home()) / "dagster")))
    write_instance_yaml(dagster_home)
    return dagster_home


def run_demo(users: int = 2_000, merchants: int = 300, days: int = 14, seed: int = 7) -> dict[str, object]:
    sys.path.insert(0, os.getcwd())
    import dagster
    from dagster import DagsterInstance

    for category in (dagster.BetaWarning, dagster.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)

    from examples.card_fraud import data, features
    from skewless import asset_keys
    from skewless.client.feature_store import FeatureStore
    from skewless.feature_assets.definitions import build_definitions
    from skewless.repository import load_repository

    started = time.perf_counter()
    state = home(features.__file__)  # the example's own state folder (SKEWLESS_HOME wins)
    config = StoreConfig.from_env(state)
    end = data.default_end()
    print(f"skewless demo — state folder {config.state_dir}")
    print(f"1. generating {days} days of card transactions for {users} users, {merchants} merchants")
    with progress.bar() as bars:  # drawn only on a terminal: captured output is unchanged
        bars.add_task("   generating", total=None)
        counts = data.generate(
            state / "data", users=users, merchants=merchants, days=days, end=end, seed=seed
        )
    print(
        f"   {counts['transactions']} transactions, {counts['user_profile_rows']} profile rows, "
        f"{counts['merchant_risk_rows']} merchant scores"
    )

    repo = load_repository(features)
    pii = sorted({g.name for g in repo.groups if g.pii_features})
    if pii:
        from skewless.storage.keys import ensure_key_ring

        # the example tags user_last_txn `pii`; a deployment runs `skewless keys init` itself
        ring = ensure_key_ring(config.state_dir)
        print(f"   pii features of {', '.join(pii)} encrypted at rest, key {ring.current} in {ring.folder}")
    # the data was just regenerated: values pushed by an earlier demo run are gone from the
    # offline store, so they go from Redis too (only this prefix's keys; never a FLUSHDB),
    # or the online/offline agreement check would rightly fail
    reset = FeatureStore(repo, config)
    reset.online.delete_all()
    reset.close()
    defs = build_definitions(repo, config)
    dagster_home = prepare_dagster_home(state)
    instance = DagsterInstance.get()
    # a demo killed earlier (Ctrl-C is clean; the OOM killer or kill -9 is not) left its run
    # "Started": mark it failed, as the `failed_dead_runs` sensor would under `make ui`
    from skewless.sensors.dead_runs import fail_dead_runs

    for run_id in fail_dead_runs(instance):
        print(f"   (run {run_id} of an earlier, killed process marked failed)")
    first, last = end - timedelta(days=days), end - timedelta(days=1)
    print(
        f"2. materializing partitions {first} .. {last} of {len(repo.groups)} group versions "
        f"(Dagster instance {dagster_home})"
    )
    # runs filed under the workspace's code location, so `make ui` shows them on the job
    # pages and the timeline (`feature_assets.launch`)
    from skewless.feature_assets.launch import execute_in_location, workspace_location

    module = "examples.card_fraud.definitions"
    location = workspace_location(module) or "card_fraud"
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with progress.bar() as bars:
        # the assets report each partition (progress.report); the run is in this process
        offline_task = bars.add_task("   offline partitions", total=len(repo.groups) * days)
        online_task = bars.add_task("   online partitions", total=len(repo.groups) * days)

        def advance(step: progress.Step) -> None:
            if step.what.endswith(" offline"):
                bars.advance(offline_task)
            elif "rows read" in step.detail:
                bars.advance(online_task)

        with progress.listen(advance):
            run = execute_in_location(
                instance,
                module,
                "defs",
                location,
                "daily_features",
                tags={
                    "dagster/asset_partition_range_start": first.isoformat(),
                    "dagster/asset_partition_range_end": last.isoformat(),
                    "skewless/demo": "true",
                },
                run_config=quiet,
            )
    if run.status != dagster.DagsterRunStatus.SUCCESS:
        raise SystemExit("materialization failed; see the run in `make ui`")
    print(f"   run {run.run_id} succeeded")
    for name in ("training_sets", "sql_views"):
        done = execute_in_location(instance, module, "defs", location, name, run_config=quiet)
        if done.status != dagster.DagsterRunStatus.SUCCESS:
            raise SystemExit(f"job {name} failed; see the run in `make ui`")

    store = FeatureStore(repo, config)
    summary: dict[str, object] = {}
    print("   group version            partitions   rows     online keys")
    for group in repo.groups:
        files = store.offline.files(group, first, last)
        rows = store.offline.scan(group, first, last).select(pl.len()).collect().item()
        keys = sum(1 for _ in store.online.keys(group))
        summary[group.ref] = {"partitions": len(files), "rows": rows, "online_keys": keys}
        print(f"   {group.ref:<24} {len(files):>10} {rows:>7} {keys:>12}")
    print(f"   offline store: {store.offline.root}")
    print(f"   online store:  {store.online.url}")

    asset_path = store.offline.training_set_path("fraud_model", 1)
    asset_rows = store.offline.footer_rows(asset_path)  # its pii columns are encrypted
    asset = asset_keys.user_string(asset_keys.training_set_path(repo.service("fraud_model:v1")))
    print(f"   training-set asset {asset}: {asset_rows} rows -> {asset_path}")
    daily = store.sql(
        "SELECT date, count(*) AS txns, round(avg(last_amount), 2) AS avg_amount "
        "FROM user_last_txn GROUP BY date ORDER BY date DESC LIMIT 3"
    )
    print("   SQL over the offline store (store.sql / DuckDB views), last three days:")
    for day, txns, avg in daily.iter_rows():
        print(f"     {day}  {txns:>6} transactions  avg amount {avg}")

    print("3. training set for service fraud_model:v1 from the client (point-in-time correct)")
    tx = pl.scan_parquet(str(state / "data" / "transactions" / "**" / "*.parquet"), hive_partitioning=False)
    labels = (
        tx.select(
            "transaction_id", "user_id", "merchant_id", pl.col("ts").alias("event_timestamp"), "is_fraud"
        )
        .sort("transaction_id")
        .gather_every(10)
        .collect()
    )
    with progress.bar() as bars:
        bars.add_task(f"   joining {labels.height:,} label rows", total=None)
        training = store.get_training_dataset(labels, service="fraud_model:v1")
    out = state / "training" / "fraud_model_v1.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    training.write_parquet(out)
    print(
        f"   {training.height} label rows in -> {training.height} rows out, {training.width} columns -> {out}"
    )
    shown = [
        "transaction_id",
        "user_id",
        "event_timestamp",
        "last_amount",
        "segment",
        "credit_limit",
        "risk_score",
    ]
    with pl.Config(tbl_cols=12, tbl_rows=5, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        print(training.select(shown).head(5))

    print("4. push a transaction directly (same definitions as the batch path), twice, and read windows")
    user_id, merchant_id = int(labels["user_id"][0]), int(labels["merchant_id"][0])
    windows = [
        "user_txn_windows:v1:txn_count_1d",
        "user_txn_windows:v1:amount_sum_1d",
        "user_txn_windows:v1:foreign_count_7d",
    ]
    # a fixed event (id and time), so a second demo run re-delivers it rather than adding one
    when = datetime(end.year, end.month, end.day, tzinfo=UTC) - timedelta(seconds=1)
    event = pl.DataFrame(
        {
            "transaction_id": [10**9],
            "user_id": [user_id],
            "merchant_id": [merchant_id],
            "amount": [99.5],
            "currency_foreign": [True],
            "channel": ["online"],
            "is_fraud": [False],
            "ts": [when],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    store.push("transactions", event)
    once = store.get_online_features([{"user_id": user_id}], features=windows, output="dicts")[0]
    store.push("transactions", event)  # delivered again: counted once
    twice = store.get_online_features([{"user_id": user_id}], features=windows, output="dicts")[0]
    print(f"   windows as of now (they slide with the clock): {once}")
    print(f"   after re-delivering the same event: {'unchanged' if once == twice else twice}")
    sensor = defs.resolve_sensor_def("stream_transactions_sensor")
    with dagster.build_sensor_context(instance=instance, resources=defs.resources) as context:
        tick = sensor.evaluate_tick(context)
    for request in tick.run_requests:
        batch = defs.resolve_job_def("stream_transactions").execute_in_process(
            run_config={**request.run_config, **quiet}, instance=instance
        )
        if not batch.success:
            raise SystemExit("stream micro-batch failed; see the run in `make ui`")
    print(
        f"   sensor tick -> {len(tick.run_requests)} micro-batch run: "
        "the pushed events are now in the offline store too"
    )
    print("5. online features for three (user, merchant) pairs and an unknown user (one Redis round trip)")
    entities = labels.select("user_id", "merchant_id").unique(maintain_order=True).head(3)
    entities = pl.concat([entities, pl.DataFrame({"user_id": [10**9], "merchant_id": [1]})])
    online = store.get_online_features(entities, service="fraud_model:v1")
    with pl.Config(tbl_cols=12, tbl_rows=5, tbl_width_chars=160, tbl_hide_dataframe_shape=True):
        print(online.select("user_id", "merchant_id", "last_amount", "last_channel", "segment", "risk_score"))
    print("   (the unknown user gets each feature's declared default, as training sets do)")

    print("6. look-alike merchants: the vector index over merchant_profile:v1 (checked for recall)")
    indexed = execute_in_location(instance, module, "defs", location, "vector_indexes", run_config=quiet)
    if indexed.status != dagster.DagsterRunStatus.SUCCESS:
        raise SystemExit("job vector_indexes failed; see the run in `make ui`")
    similar = store.search(
        "merchant_profile:v1",
        entity={"merchant_id": 1},
        k=4,
        features=["category", "merchant_risk:v1:risk_score"],
    )
    print(f"   merchants most like merchant 1 ({similar['category'][0] if similar.height else '-'}):")
    with pl.Config(tbl_rows=5, tbl_width_chars=120, tbl_hide_dataframe_shape=True, float_precision=4):
        print(similar)
    summary["look_alikes"] = similar["merchant_id"].to_list()

    from skewless.demo_checks import block_bad_delivery, log_and_check_skew, print_check_summary

    print("7. data-quality checks: the latest result of every asset check (shown in `make ui` too)")
    summary["checks"] = print_check_summary(defs, instance)
    print(
        f"   a bad merchant-risk delivery for {last}: scores of 1.7 (declared range [0, 1]), a null category"
    )
    blocked = block_bad_delivery(defs, instance, store, repo, state / "data", last)
    for description in blocked["descriptions"]:
        print(f"   BLOCKED {description[:220]}")
    print(
        f"   run failed: {blocked['run_failed']}; "
        f"offline partition unchanged: {blocked['partition_unchanged']}; "
        f"Redis unchanged and online asset not run: {blocked['online_unchanged']}"
    )
    summary["blocked"] = {k: v for k, v in blocked.items() if k != "run_id"}
    skew = log_and_check_skew(defs, instance, store, labels.select("user_id", "merchant_id").head(1000))
    for check in skew["checks"]:
        print(
            f"   served vectors vs training set: {check.check_name} {'ok' if check.passed else 'FAIL'}: "
            f"{check.description}"
        )
    if any(not c.passed for c in skew["checks"]):
        print(
            "   (real skew: the data stops at midnight, so 1-day window counts and hours served now "
            "differ from those at training time)"
        )
    print("   online latency by feature group (this process):")
    for row in skew["latency"].iter_rows(named=True):
        print(
            f"     {row['group']:<26} {row['requests']:>5} requests  "
            f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
        )

    store.close()
    summary["training_rows"] = training.height
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(f"done in {summary['seconds']}s. `make ui` opens Dagster on the same instance.")
    return summary
