"""Turn a feature repository into one Dagster `Definitions`: the asset factory's entry point."""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from skewless.asset_keys import (
    index_key,
    offline_key,
    online_key,
    registry_snapshot_key,
    served_key,
    sql_views_key,
    training_set_key,
)
from skewless.config import ExecutionConfig, StoreConfig
from skewless.feature_assets.audit_log import audit_definitions
from skewless.feature_assets.distributed_training import (
    WORK_IO,
    WorkAreaIOManager,
    build_distributed_training_job,
)
from skewless.feature_assets.indexes import build_index_asset
from skewless.feature_assets.lineage import build_registry_asset, service_specs
from skewless.feature_assets.offline import build_offline_asset
from skewless.feature_assets.online import build_online_asset
from skewless.feature_assets.retention import lifecycle_definitions
from skewless.feature_assets.served import build_served_asset
from skewless.feature_assets.sources import source_spec
from skewless.feature_assets.sql_views import build_sql_views_asset
from skewless.feature_assets.training_sets import build_training_set_asset
from skewless.language.source import FileSource
from skewless.repository import FeatureRepository, load_repository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.sensors.dead_runs import build_dead_run_sensor
from skewless.sensors.streams import (
    build_landing_job,
    build_landing_sensor,
    build_stream_job,
    build_stream_sensor,
)


def daily_partitions(start: date) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start.isoformat(), timezone="UTC")


def feature_definitions(
    repo: FeatureRepository, checks: bool = True, partitions_per_run: int = 0
) -> dg.Definitions:
    """Sources as external assets; per group version an offline and an online asset (with
    their checks); one daily job and schedule per partition start date. `partitions_per_run`
    sets the assets' backfill policy (0: one run per backfill; N: runs of N days)."""
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = [source_spec(s) for s in repo.sources]
    by_start: dict[date, list[dg.AssetKey]] = defaultdict(list)
    partitions_by_start: dict[date, dg.DailyPartitionsDefinition] = {}
    for group in repo.groups:
        start = group.source.start
        partitions = partitions_by_start.setdefault(start, daily_partitions(start))
        assets.append(build_offline_asset(group, partitions, checks, partitions_per_run))
        assets.append(build_online_asset(repo, group, partitions, checks, partitions_per_run))
        by_start[start] += [offline_key(group), online_key(group)]
        if group.index is not None:
            assets.append(build_index_asset(group, checks))
    jobs, schedules = [], []
    for i, (start, keys) in enumerate(sorted(by_start.items())):
        name = "daily_features" if i == 0 else f"daily_features_from_{start.isoformat().replace('-', '_')}"
        job = dg.define_asset_job(
            name=name,
            selection=dg.AssetSelection.assets(*keys),
            partitions_def=partitions_by_start[start],
            description="Yesterday's partition of every feature group version, offline then online.",
        )
        jobs.append(job)
        schedules.append(dg.build_schedule_from_partitioned_job(job, hour_of_day=0, minute_of_hour=30))
    indexed = [index_key(g) for g in repo.groups if g.index is not None]
    if indexed:
        job = dg.define_asset_job(
            name="vector_indexes",
            selection=dg.AssetSelection.assets(*indexed),
            description="Rebuild every vector index from its group's offline partitions, checked for recall.",
        )
        jobs.append(job)
        schedules.append(dg.ScheduleDefinition(job=job, cron_schedule="30 1 * * *"))
    return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules)


def training_definitions(repo: FeatureRepository) -> dg.Definitions:
    """Per feature service with labels a training-set asset and a distributed job that
    materializes it with one step per bucket (`distributed_training`); one job rebuilding
    every training set (in process, per asset)."""
    labelled = [s for s in repo.services if s.labels is not None]
    training = [build_training_set_asset(repo, s) for s in labelled]
    if not training:
        return dg.Definitions()
    job = dg.define_asset_job(
        name="training_sets",
        selection=dg.AssetSelection.assets(*(training_set_key(s) for s in labelled)),
        description="Rebuild every feature service's training set from its labels.",
    )
    distributed = [build_distributed_training_job(repo, s) for s in labelled]
    return dg.Definitions(assets=training, jobs=[job, *distributed])


def serving_definitions(repo: FeatureRepository, checks: bool = True) -> dg.Definitions:
    """Feature services and models as assets; per service its served-vector log and the
    training/serving skew check, flushed hourly."""
    assets: list[dg.AssetsDefinition | dg.AssetSpec] = [*service_specs(repo)]
    asset_checks: list[dg.AssetChecksDefinition] = []
    for service in repo.services:
        served, skew = build_served_asset(repo, service)
        assets.append(served)
        if checks:
            asset_checks.append(skew)
    if not repo.services:
        return dg.Definitions(assets=assets)
    job = dg.define_asset_job(
        name="serving_logs",
        selection=dg.AssetSelection.assets(*(served_key(s) for s in repo.services)),
        description="Flush the served-vector logs to Parquet and check training/serving skew.",
    )
    schedule = dg.ScheduleDefinition(job=job, cron_schedule="15 * * * *")
    return dg.Definitions(assets=assets, asset_checks=asset_checks, jobs=[job], schedules=[schedule])


def catalog_definitions(repo: FeatureRepository) -> dg.Definitions:
    """The registry snapshot and the DuckDB views over the offline store, each with a job."""
    return dg.Definitions(
        assets=[build_sql_views_asset(repo), build_registry_asset(repo)],
        jobs=[
            dg.define_asset_job(
                name="registry",
                selection=dg.AssetSelection.assets(registry_snapshot_key()),
                description="Snapshot the registry (definitions, fingerprints, consumers) as JSON, Parquet.",
            ),
            dg.define_asset_job(name="sql_views", selection=dg.AssetSelection.assets(sql_views_key())),
        ],
    )


def stream_definitions(repo: FeatureRepository) -> dg.Definitions:
    """Per streamed source its micro-batch job and sensor (and, for files, the landing sensor);
    the sensor that marks runs whose process died as failed."""
    jobs: list[dg.JobDefinition | dg.UnresolvedAssetJobDefinition] = []
    sensors = [build_dead_run_sensor()]
    for source in repo.sources:
        if source.stream and any(g.source.name == source.name for g in repo.groups):
            stream_job = build_stream_job(repo, source.name)
            jobs.append(stream_job)
            sensors.append(build_stream_sensor(source.name, stream_job))
            if isinstance(source, FileSource):
                landing_job = build_landing_job(repo, source.name)
                jobs.append(landing_job)
                sensors.append(build_landing_sensor(source, landing_job))
    return dg.Definitions(jobs=jobs, sensors=sensors)


def store_resources(config: StoreConfig) -> dict[str, Any]:
    """The resources every asset, check and sensor above reads its stores through."""
    return {
        "offline": OfflineStoreResource(root=config.offline_root, state_dir=config.state_dir),
        "online": OnlineStoreResource(
            state_dir=config.state_dir, redis_url=config.redis_url, key_prefix=config.key_prefix
        ),
        "duckdb": DuckDBResource(database=str(Path(config.state_dir) / "offline.duckdb")),
        WORK_IO: WorkAreaIOManager(root=config.offline_root),
    }


def asset_definitions(
    repo: FeatureRepository, checks: bool = True, partitions_per_run: int = 0
) -> dg.Definitions:
    """Every concern's definitions merged, without resources: the asset graph itself (what
    impact analysis walks), independent of where the stores are."""
    return dg.Definitions.merge(
        feature_definitions(repo, checks, partitions_per_run),
        training_definitions(repo),
        serving_definitions(repo, checks),
        catalog_definitions(repo),
        stream_definitions(repo),
        lifecycle_definitions(repo),
        audit_definitions(),
    )


def _from_env_or_value(value: str | None, variable: str) -> Any:
    """A config value read from `variable` in each process when that is where it came from
    (so a broker password is not written into the job's snapshot), else the value itself."""
    if value is not None and os.environ.get(variable) == value:
        return {"env": variable}
    return value


def executor_definition(execution: ExecutionConfig) -> dg.ExecutorDefinition | None:
    """The executor every job without its own runs on (the streaming jobs keep the in-process
    one); None leaves Dagster's default (multiprocess for launched runs)."""
    if execution.executor == "in_process":
        return dg.in_process_executor
    if execution.executor == "multiprocess":
        config = {"max_concurrent": execution.max_concurrent} if execution.max_concurrent else {}
        return dg.multiprocess_executor.configured(config) if config else dg.multiprocess_executor
    if execution.executor == "celery":
        from dagster_celery import celery_executor

        return celery_executor.configured(
            {
                "broker": _from_env_or_value(execution.celery_broker, "SKEWLESS_CELERY_BROKER"),
                "backend": _from_env_or_value(
                    execution.backend,
                    "SKEWLESS_CELERY_BACKEND" if execution.celery_backend else "SKEWLESS_CELERY_BROKER",
                ),
            }
        )
    return None


def build_definitions(
    repository: FeatureRepository | str,
    config: StoreConfig | None = None,
    checks: bool = True,
    execution: ExecutionConfig | None = None,
) -> dg.Definitions:
    """The one `Definitions` of a feature repository: each concern's definitions (features,
    training sets, serving, catalog, streams) merged once, with the store resources.

    `checks=False` leaves out every data-quality check (for measuring what they cost; a
    deployment should keep them: they are what stops bad partitions). `execution` (default
    `ExecutionConfig.from_env()`) chooses the jobs' executor and the backfill policy's
    partitions per run."""
    repo = load_repository(repository) if isinstance(repository, str) else repository
    config = config or StoreConfig.from_env(repo.state_dir)
    execution = execution or ExecutionConfig.from_env()
    resources = dg.Definitions(resources=store_resources(config), executor=executor_definition(execution))
    return dg.Definitions.merge(asset_definitions(repo, checks, execution.partitions_per_run), resources)
