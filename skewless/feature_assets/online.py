"""The online asset of a group version: push the latest value per entity to Redis."""

import math
from datetime import date, timedelta

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from skewless import progress
from skewless.feature_assets.checks import feature_store, online_check_specs, to_check_result
from skewless.feature_assets.column_lineage import online_column_lineage
from skewless.feature_assets.metadata import asset_tags, freshness_policy, online_column_schema
from skewless.feature_assets.offline import offline_key, partition_days
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.storage.online import ENCODE_CHUNK


def online_key(group: FeatureGroup) -> dg.AssetKey:
    return dg.AssetKey(["online", group.name, f"v{group.version}"])


def build_online_asset(
    repo: FeatureRepository,
    group: FeatureGroup,
    partitions: dg.DailyPartitionsDefinition,
    checks: bool = True,
) -> dg.AssetsDefinition:
    """Incremental: only entities present in the run's partitions are written.

    Re-running an old partition after a newer one is harmless: the write guard on the
    server keeps whichever value has the newer event time.

    Right after the write, the asset checks the group version's online freshness (age of
    the newest event time in Redis) and agreement with the offline store; a disagreement
    fails the step (blocking). Evaluated inside the asset rather than as separate check
    steps: a Dagster step costs more than the two checks (bench/checks.py).
    """

    @dg.asset(
        key=online_key(group),
        deps=[offline_key(group)],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=group.name,
        description=f"Latest values of {group.ref} in the online store (Redis)",
        owners=[group.owner] if group.owner else None,
        tags=asset_tags(group),
        metadata={"dagster/column_schema": online_column_schema(group), "version": group.version},
        kinds={"redis"},
        freshness_policy=freshness_policy(group),
        check_specs=online_check_specs(group, online_key(group)) if checks else None,
    )
    def _online(context: AssetExecutionContext, offline: OfflineStoreResource, online: OnlineStoreResource):
        result = _write(context, offline, online)
        if checks:
            from skewless.checks.agreement import check_agreement, check_online_freshness

            store = feature_store(repo, offline, online)
            days = partition_days(context)
            outcomes = [check_online_freshness(store, group), check_agreement(store, group, days=days)]
            yield result
            for outcome in outcomes:
                yield to_check_result(outcome)
        else:
            yield result

    def _write(
        context: AssetExecutionContext, offline: OfflineStoreResource, online: OnlineStoreResource
    ) -> dg.MaterializeResult:
        from skewless.compute.rows import latest_per_entity

        days = partition_days(context)
        rows = offline.store().scan(group, days[0], days[-1]).collect()
        _report_days(context, group, days, rows)
        if group.is_windowed:
            # window groups: the events still inside the longest window become online state
            # (the latest version of each event: a correction may live on another day)
            from skewless.storage.offline import superseded_filter

            store_offline = offline.store()
            rows = superseded_filter(group, store_offline.files(group), rows.lazy()).collect()
            added = online.store().write_events(group, rows)
            context.log.info(f"{group.ref}: {added} new events in the online window state")
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": rows.height,
                    "dagster/column_lineage": online_column_lineage(group, offline_key(group)),
                    "events_added": added,
                    "longest_window": str(group.max_window),
                }
            )
        latest = latest_per_entity(group, rows)
        store = online.store()
        written = [0, 0]  # rows, chunks
        chunks = math.ceil(latest.height / ENCODE_CHUNK)

        def wrote(n: int) -> None:
            written[0] += n
            written[1] += 1
            detail = f"wrote {written[0]:,}/{latest.height:,} entities"
            progress.report(context.log, f"{group.ref} online", written[1], chunks, detail)

        stats = store.write_latest(group, latest, progress=wrote)
        context.log.info(f"{group.ref}: {stats}")
        ttl = group.time_to_live
        key_pattern = f"{store.key_prefix}:{{{group.entity.name}:<keys>}}:{group.name}:v{group.version}"
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": latest.height,
                "dagster/column_lineage": online_column_lineage(group, offline_key(group)),
                "entities_in_partitions": latest.height,
                "keys_written": stats["written"],
                "kept_newer_value": stats["skipped_older"],
                "expired_not_written": stats["expired"],
                "ttl_seconds": int(ttl / timedelta(seconds=1)) if ttl else 0,
                "key_pattern": key_pattern,
            }
        )

    return _online


def _report_days(
    context: AssetExecutionContext, group: FeatureGroup, days: list[date], rows: pl.DataFrame
) -> None:
    """One step line per partition of a multi-day run: the rows the online write reads."""
    if not days:
        return
    per_day = (
        dict(rows.group_by(pl.col(EVENT_TIMESTAMP).dt.date().alias("day")).len().iter_rows())
        if rows.height
        else {}
    )
    for i, day in enumerate(days, 1):
        line = progress.partition_line(i, len(days), day, per_day.get(day, 0), "rows read")
        progress.report(context.log, f"{group.ref} online", i, len(days), line)
