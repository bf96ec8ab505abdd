"""The offline asset of a group version: daily partitions of feature rows in Parquet."""

from datetime import UTC, date, datetime

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from skewless import progress
from skewless.asset_keys import offline_key, source_key
from skewless.feature_assets.audit_log import record_materialization
from skewless.feature_assets.checks import partition_check_specs, to_check_result
from skewless.feature_assets.column_lineage import offline_column_lineage
from skewless.feature_assets.metadata import (
    asset_tags,
    code_version,
    definition_metadata,
    freshness_policy,
    partition_stats,
    partitions_table,
)
from skewless.language.feature_group import EVENT_TIMESTAMP, FeatureGroup
from skewless.language.source import FileSource
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.storage.offline import Location, OfflineStore, days_between


def backfill_policy(partitions_per_run: int = 0) -> dg.BackfillPolicy:
    """0: a backfill is one run (all its days checked before any is written); N: runs of N
    days, which Dagster's run coordinator (or `feature_assets.backfill`) runs side by side."""
    if partitions_per_run:
        return dg.BackfillPolicy.multi_run(partitions_per_run)
    return dg.BackfillPolicy.single_run()


def build_offline_asset(
    group: FeatureGroup,
    partitions: dg.DailyPartitionsDefinition,
    checks: bool = True,
    partitions_per_run: int = 0,
) -> dg.AssetsDefinition:
    """One asset per group version; a backfill of many days is a single run, or runs of
    `partitions_per_run` days (`backfill_policy`).

    All days of a run are computed and checked before the first file is written, so a bad
    day fails the run with nothing replaced. The checks' results are reported either way;
    a blocking failure then fails the step, so the online asset downstream never runs.
    """

    @dg.asset(
        key=offline_key(group),
        deps=[source_key(group.source)],
        partitions_def=partitions,
        backfill_policy=backfill_policy(partitions_per_run),
        group_name=group.name,
        description=(
            f"Offline store of feature group {group.ref}: its rows as daily Parquet partitions "
            "(history for point-in-time training sets)."
            + (f"\n\n{group.description}" if group.description else "")
        ),
        owners=[group.owner] if group.owner else None,
        tags=asset_tags(group, "offline"),
        code_version=code_version(group),
        kinds={"polars", "parquet"},
        metadata=definition_metadata(group),
        check_specs=partition_check_specs(group, offline_key(group)) if checks else None,
        freshness_policy=freshness_policy(group),
    )
    def _offline(context: AssetExecutionContext, offline: OfflineStoreResource, online: OnlineStoreResource):
        from skewless.checks.outcome import CheckOutcome
        from skewless.checks.partition import check_partitions, partition_check_names
        from skewless.compute.rows import compute_rows
        from skewless.errors import CheckFailedError, TransformationError

        window = context.partition_time_window
        store = offline.store()
        days = days_between(window.start.date(), window.end.date())
        # compaction: the pieces micro-batches stored so far, listed *before* the source is
        # read; each one's rows are in the source by then (pushed file or landed file first)
        compactable = _compactable_pieces(group, store, days)
        if len(days) > 1:
            context.log.info(f"{group.ref} offline: computing {len(days)} days {days[0]}..{days[-1]}")
        try:
            rows = compute_rows(group, window.start, window.end)
        except TransformationError as exc:
            if not checks:
                raise
            # the transformation's output does not fit the declaration at all: the schema
            # check fails with the same message the error carries; the others cannot run
            yield to_check_result(CheckOutcome("schema", passed=False, description=str(exc)))
            for name in partition_check_names(group)[1:]:
                yield to_check_result(CheckOutcome(name, passed=False, description="not run: schema failed"))
            raise
        # erased entities (`FeatureStore.erase`) stay erased whatever the source still holds
        rows = store.without_erased(group, rows)
        outcomes = check_partitions(group, rows, days, store) if checks else []
        for outcome in outcomes:
            yield to_check_result(outcome)
        blocking = [o for o in outcomes if o.blocks]
        if blocking:
            raise CheckFailedError(
                f"{group.ref}: partitions {days[0]}..{days[-1]} blocked by the "
                f"{', '.join(o.name for o in blocking)} check, nothing written: "
                + " | ".join(o.description for o in blocking)
            )
        by_day = rows.with_columns(pl.col(EVENT_TIMESTAMP).dt.date().alias("__day"))
        counts = []
        compacted = 0
        # days the group's retention= no longer keeps are not written: the retention pass
        # deleted them, and a backfill must not bring them back (feature_assets/retention.py)
        first_kept = group.first_retained_day(datetime.now(UTC))
        past = [day for day in days if first_kept is not None and day < first_kept]
        if past:
            context.log.warning(
                f"{group.ref}: {len(past)} days {past[0]}..{past[-1]} are past its retention: not written"
            )
        for i, day in enumerate(days, 1):
            if day in past:
                continue
            part = by_day.filter(pl.col("__day") == day).drop("__day")
            path = store.write_partition(group, day, part)
            # only after the new partition is in place (readers read pieces before partitions)
            compacted += store.delete_pieces(compactable.get(day, []))
            counts.append((day.isoformat(), part.height))
            # each partition's own figures (the result's metadata below is the run's, shared)
            context.add_asset_metadata(
                {**partition_stats(group, part), "partition_path": dg.MetadataValue.path(str(path))},
                partition_key=day.isoformat(),
            )
            progress.report(
                context.log,
                f"{group.ref} offline",
                i,
                len(days),
                progress.partition_line(i, len(days), day, part.height),
            )
        context.log.info(
            f"{group.ref}: wrote {rows.height} rows in {len(days)} partitions, compacted {compacted} pieces"
        )
        record_materialization(
            context, offline, online, group.ref, rows.height, f"offline {days[0]}..{days[-1]}"
        )
        yield dg.MaterializeResult(
            metadata={
                "run_rows": rows.height,
                "dagster/column_schema": definition_metadata(group)["dagster/column_schema"],
                "dagster/column_lineage": offline_column_lineage(group, _source_schema(group)),
                "partitions_written": len(days) - len(past),
                "partitions_past_retention": len(past),
                "pieces_compacted": compacted,
                "rows_per_partition": partitions_table(
                    pl.DataFrame(counts, schema=["day", "rows"], orient="row")
                ),
                "path": dg.MetadataValue.path(str(store.group_dir(group))),
                "run_entities": rows.select(group.entity.key_columns).n_unique() if rows.height else 0,
            }
        )

    return _offline


def _compactable_pieces(
    group: FeatureGroup, store: OfflineStore, days: list[date]
) -> dict[date, list[Location]]:
    """Pieces a recomputation of `days` from the source may delete: those existing now.

    Only a `FileSource` keeps pushed rows with its data (`_pushed/`), so only its pieces are
    covered by the source; other sources keep their pieces (readers merge them). A piece
    written after this listing is never deleted, even though the source read may include it.
    """
    if not isinstance(group.source, FileSource):
        return {}
    return {day: pieces for day in days if (pieces := store.pieces(group, day))}


def _source_schema(group: FeatureGroup) -> pl.Schema | None:
    """The source's columns, for column lineage (best effort: metadata must not fail a run)."""
    try:
        return group.source.scan().collect_schema()
    except Exception:
        return None


def partition_days(context: AssetExecutionContext) -> list[date]:
    window = context.partition_time_window
    return days_between(window.start.date(), window.end.date())
