"""Offline retention: a scheduled asset that deletes partitions older than a group's `retention=`.

Why an asset and not a cron job of its own: each pass is then a materialization with its
figures (days deleted per group version, the oldest day kept) in the catalog, and it runs
on the same executor and instance as everything else. Online values need no pass: a value
is written with an expiry at event time + `ttl` (`write_latest.lua`, `PEXPIREAT`), so Redis
drops it itself. The offline asset also refuses to write days already past retention, so a
backfill cannot bring deleted history back (`feature_assets/offline.py`).
"""

from datetime import UTC, datetime

import dagster as dg
from dagster import AssetExecutionContext

from skewless.asset_keys import offline_key, retention_key
from skewless.language.durations import format_duration
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource

RETENTION_JOB = "offline_retention"
RETENTION_CRON = "0 2 * * *"  # daily, after the 00:30 feature job


def build_retention_asset(repo: FeatureRepository) -> dg.AssetsDefinition | None:
    """The retention pass over every group version with `retention=` (None if none has)."""
    groups = [g for g in repo.groups if g.retention_period is not None]
    if not groups:
        return None

    @dg.asset(
        key=retention_key(),
        deps=[offline_key(g) for g in groups],
        group_name="lifecycle",
        description="Delete offline partitions older than each group's retention: "
        + ", ".join(f"{g.ref} {format_duration(g.retention_period)}" for g in groups),
        kinds={"parquet"},
        tags={"skewless/kind": "lifecycle"},
    )
    def _retention(context: AssetExecutionContext, offline: OfflineStoreResource) -> dg.MaterializeResult:
        now = datetime.now(UTC)
        store = offline.store()
        deleted: dict[str, int] = {}
        kept_from: dict[str, str] = {}
        for group in groups:
            days = store.delete_expired(group, now)
            deleted[group.ref] = len(days)
            kept_from[group.ref] = str(group.first_retained_day(now))
            if days:
                context.log.info(
                    f"{group.ref}: deleted {len(days)} partitions {days[0]}..{days[-1]} "
                    f"(retention {format_duration(group.retention_period)})"
                )
        return dg.MaterializeResult(
            metadata={
                "partitions_deleted": sum(deleted.values()),
                "deleted_by_group": dg.MetadataValue.json(deleted),
                "first_day_kept": dg.MetadataValue.json(kept_from),
            }
        )

    return _retention


def lifecycle_definitions(repo: FeatureRepository) -> dg.Definitions:
    """The retention asset, its job and its daily schedule (nothing without `retention=`)."""
    asset = build_retention_asset(repo)
    if asset is None:
        return dg.Definitions()
    job = dg.define_asset_job(
        name=RETENTION_JOB,
        selection=dg.AssetSelection.assets(retention_key()),
        description="Delete offline partitions past each group's retention.",
    )
    return dg.Definitions(
        assets=[asset], jobs=[job], schedules=[dg.ScheduleDefinition(job=job, cron_schedule=RETENTION_CRON)]
    )
