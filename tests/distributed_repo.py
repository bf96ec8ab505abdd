"""A small repository for the distributed training-set tests: a row group on one key, a row
group on two keys and a window group, with a feature service whose labels repeat rows.

Its data lives in `$SKEWLESS_HOME/data` (written by `write_data`), so the step processes of
a multiprocess or Celery run, which import this module again, find the same files. `defs`
is what `dagster job execute -m tests.distributed_repo` loads (executor from
`SKEWLESS_EXECUTOR`, as deployed).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from skewless import Aggregation, Entity, Feature, FeatureGroup, FeatureRepository, FeatureService, FileSource
from skewless.asset_keys import training_set_key
from skewless.client.feature_store import FeatureStore
from skewless.config import StoreConfig, home
from skewless.feature_assets.definitions import build_definitions

START = "2026-03-01"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 4
JOB = "scorer_v1_distributed_training_set"


def data_dir() -> Path:
    return home() / "data"


def write_data(users: int = 12, n: int = 600, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    folder = data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    seconds = rng.integers(0, DAYS * 86_400, size=n)
    ts = [T0 + timedelta(seconds=int(s)) for s in seconds]
    events = pl.DataFrame(
        {
            "eid": [f"e{i}" for i in range(n)],
            "user_id": rng.integers(1, users + 1, size=n).astype(np.int64),
            "shop": rng.choice(["a", "b", "c"], size=n),
            "ts": ts,
            "created": [
                t + timedelta(seconds=int(c)) for t, c in zip(ts, rng.integers(0, 600, size=n), strict=True)
            ],
            "amount": np.round(rng.normal(40, 15, size=n), 2),
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "created": pl.Datetime("us", "UTC")},
    )
    events.write_parquet(folder / "events.parquet")
    # labels: unknown users (no rows), times before any event, and repeated rows
    m = 200
    label_seconds = rng.integers(-3600, DAYS * 86_400 + 3600, size=m)
    labels = pl.DataFrame(
        {
            "user_id": rng.integers(1, users + 4, size=m).astype(np.int64),
            "shop": rng.choice(["a", "b", "c", "z"], size=m),
            "label_ts": [T0 + timedelta(seconds=int(s)) for s in label_seconds],
            "is_good": rng.integers(0, 2, size=m).astype(np.int8),
        },
        schema_overrides={"label_ts": pl.Datetime("us", "UTC")},
    )
    labels = pl.concat([labels, labels.head(15), labels.slice(40, 5)])
    labels.write_parquet(folder / "labels.parquet")


def repository() -> FeatureRepository:
    folder = data_dir()
    user = Entity("user", {"user_id": pl.Int64})
    user_shop = Entity("user_shop", {"user_id": pl.Int64, "shop": pl.String})
    events = FileSource(
        "events", folder / "events.parquet", "ts", created_timestamp_field="created", start_date=START
    )
    window_events = FileSource(
        "window_events", folder / "events.parquet", "ts", id_field="eid", start_date=START
    )
    last = FeatureGroup(
        "user_last",
        user,
        events,
        [Feature("amount", pl.Float64, default=0.0), Feature("last_shop", pl.String, default="none")],
        transformation=lambda f: f.with_columns(pl.col("shop").alias("last_shop")),
        ttl="2d",
    )
    pair = FeatureGroup(
        "user_shop_last",
        user_shop,
        events,
        [Feature("amount_here", pl.Float64)],
        transformation=lambda f: f.with_columns(pl.col("amount").alias("amount_here")),
    )
    windows = FeatureGroup(
        "user_windows",
        user,
        window_events,
        aggregations=[Aggregation("count", windows=["1d"]), Aggregation("sum", "amount", ["2d"])],
    )
    service = FeatureService(
        "scorer",
        [
            "user_last:v1:amount",
            "user_last:v1:last_shop",
            "user_shop_last:v1:amount_here",
            "user_windows:v1",
        ],
        labels=FileSource("scorer_labels", folder / "labels.parquet", "label_ts", start_date=START),
    )
    return FeatureRepository(groups=[last, pair, windows], services=[service])


def materialize_features(config: StoreConfig) -> None:
    """The repository's feature partitions (offline only: training sets read nothing else)."""
    defs = build_definitions(repository(), config)
    with dg.instance_for_test() as instance:
        assert dg.materialize(
            list(defs.assets or []),
            selection=dg.AssetSelection.key_prefixes(["features"]),
            resources=defs.resources,
            instance=instance,
            tags={
                "dagster/asset_partition_range_start": START,
                "dagster/asset_partition_range_end": "2026-03-04",
            },
        ).success


def in_memory(store: FeatureStore) -> pl.DataFrame:
    service = store.repository.services[0]
    assert service.labels is not None
    labels = service.labels.scan().collect()
    return store.get_training_dataset(
        labels, service=service.ref, timestamp_column=service.labels.timestamp_field, engine="memory"
    )


def materialization(instance: dg.DagsterInstance) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(training_set_key(repository().services[0]))
    assert event is not None and event.asset_materialization is not None
    return event.asset_materialization


def definitions():
    return build_definitions(repository())


def __getattr__(name: str):
    if name == "defs":  # `dagster job execute -m tests.distributed_repo -a defs`
        return definitions()
    raise AttributeError(name)


def distributed_job() -> dg.JobDefinition:
    """The scorer's distributed job, for `dg.reconstructable` (re-execution from failure
    needs a job Dagster can load again by name)."""
    return build_definitions(repository(), StoreConfig.from_env()).resolve_job_def(JOB)
