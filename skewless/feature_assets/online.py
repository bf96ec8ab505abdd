"""The online asset of a group version: push the latest value per entity to Redis."""

from datetime import date, timedelta

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from skewless import progress
from skewless.asset_keys import offline_key, offline_path, online_key, user_string
from skewless.feature_assets.audit_log import record_materialization
from skewless.feature_assets.checks import feature_store, online_check_specs, to_check_result
from skewless.feature_assets.column_lineage import online_column_lineage
from skewless.feature_assets.metadata import (
    asset_tags,
    code_version,
    freshness_policy,
    online_column_schema,
    partition_stats,
)
from skewless.feature_assets.offline import backfill_policy, partition_days
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.storage import online_keys


class OnlineWriteConfig(dg.Config):
    """Run config of an online asset (`ops: {<asset>: {config: {allow_missing: true}}}`)."""

    allow_missing: bool = False
    """Write what is stored when some of the run's offline partitions were never materialized
    (logged as a warning) instead of failing: the default fails, because Redis would silently
    keep older values for those days' entities."""


def build_online_asset(
    repo: FeatureRepository,
    group: FeatureGroup,
    partitions: dg.DailyPartitionsDefinition,
    checks: bool = True,
    partitions_per_run: int = 0,
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
        backfill_policy=backfill_policy(partitions_per_run),
        group_name=group.name,
        description=(
            f"Online store of feature group {group.ref}: the latest value per entity in Redis, "
            "for serving." + (f"\n\n{group.description}" if group.description else "")
        ),
        owners=[group.owner] if group.owner else None,
        tags=asset_tags(group, "online"),
        code_version=code_version(group),
        metadata={"dagster/column_schema": online_column_schema(group), "version": group.version},
        kinds={"redis"},
        freshness_policy=freshness_policy(group),
        check_specs=online_check_specs(group, online_key(group)) if checks else None,
    )
    def _online(
        context: AssetExecutionContext,
        config: OnlineWriteConfig,
        offline: OfflineStoreResource,
        online: OnlineStoreResource,
    ):
        _check_coverage(context, config, offline)
        result = _write(context, offline, online)
        if checks:
            from skewless.serving.agreement import check_agreement, check_online_freshness

            store = feature_store(repo, offline, online)
            days = partition_days(context)
            outcomes = [check_online_freshness(store, group), check_agreement(store, group, days=days)]
            yield result
            for outcome in outcomes:
                yield to_check_result(outcome)
        else:
            yield result

    def _check_coverage(
        context: AssetExecutionContext, config: OnlineWriteConfig, offline: OfflineStoreResource
    ) -> None:
        """The run's days must be in the offline store (those with source events: see
        `compute.coverage`), else this run would write nothing for them, silently."""
        from skewless.compute import coverage

        missing, source_read = coverage.missing_days(offline.store(), group, set(partition_days(context)))
        if not missing:
            return
        message = coverage.missing_message(
            group,
            missing,
            asset=user_string(offline_path(group)),
            needed_by="this online run reads",
            remedy="run this asset with config allow_missing: true to write what is stored",
            source_read=source_read,
        )
        if config.allow_missing:
            context.log.warning(message)
        coverage.enforce(message, config.allow_missing)

    def _write(
        context: AssetExecutionContext, offline: OfflineStoreResource, online: OnlineStoreResource
    ) -> dg.MaterializeResult:
        from skewless.compute.rows import latest_per_entity

        days = partition_days(context)
        rows = offline.store().scan(group, days[0], days[-1]).collect()
        day_of = pl.col(EVENT_TIMESTAMP).dt.date()
        _report_days(context, group, days, rows)
        if group.is_windowed:
            # window groups: the events still inside the longest window become online state
            # (the latest version of each event: a correction may live on another day)
            from skewless.storage.offline import superseded_filter

            store_offline = offline.store()
            rows = superseded_filter(group, store_offline.files(group), rows.lazy(), store_offline).collect()
            # one write for the run: the write script resolves an id's versions within a batch
            added = online.store().write_events(group, rows)
            context.log.info(f"{group.ref}: {added} new events in the online window state")
            detail = f"online {days[0]}..{days[-1]}"
            record_materialization(context, offline, online, group.ref, added, detail)
            for day in days:
                # each partition's own events (the run's totals are on every partition)
                context.add_asset_metadata(
                    partition_stats(group, rows.filter(day_of == day)), partition_key=day.isoformat()
                )
            return dg.MaterializeResult(
                metadata={
                    "run_rows": rows.height,
                    "dagster/column_lineage": online_column_lineage(group, offline_key(group)),
                    "events_added": added,
                    "longest_window": str(group.max_window),
                }
            )
        latest = latest_per_entity(group, rows)
        store = online.store()
        totals = {"written": 0, "skipped_older": 0, "expired": 0}
        for day in days:
            # the entities whose latest value comes from this day, written per day (disjoint
            # keys: each entity has one latest row) so each partition reports its own writes
            sent = latest.filter(day_of == day)
            stats = store.write_latest(group, sent) if sent.height else dict.fromkeys(totals, 0)
            for name in totals:
                totals[name] += stats[name]
            read = rows.filter(day_of == day)
            context.add_asset_metadata(
                {
                    **partition_stats(group, sent),
                    "rows_read": read.height,
                    "entities": read.select(group.entity.key_columns).n_unique() if read.height else 0,
                    "keys_written": stats["written"],
                    "kept_newer_value": stats["skipped_older"],
                    "expired_not_written": stats["expired"],
                },
                partition_key=day.isoformat(),
            )
        context.log.info(f"{group.ref}: {totals}")
        record_materialization(
            context, offline, online, group.ref, totals["written"], f"online {days[0]}..{days[-1]}"
        )
        ttl = group.time_to_live
        key_pattern = online_keys.key_pattern(store.key_prefix, group)
        return dg.MaterializeResult(
            metadata={
                "dagster/column_lineage": online_column_lineage(group, offline_key(group)),
                "run_entities": latest.height,
                "run_keys_written": totals["written"],
                "run_kept_newer_value": totals["skipped_older"],
                "run_expired_not_written": totals["expired"],
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
