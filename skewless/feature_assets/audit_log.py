"""The audit log's asset, and how the materialization assets record themselves in it.

`lifecycle/audit_log` compacts the audit stream (`storage.audit`) into Parquet day partitions
of the offline store and trims what it wrote, hourly. Why an asset: each pass is a
materialization with its figures (entries moved, pieces written) in the catalog, on the
same executor and instance as everything else, like the retention pass next to it.

`record_materialization` is the one call the offline and online assets make: a
materialization is a write by the deployment (role `default`, channel `dagster`, the run id
as request id), always recorded.
"""

import dagster as dg
from dagster import AssetExecutionContext

from skewless.asset_keys import audit_log_key
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.storage import audit

AUDIT_JOB = "audit_log"
AUDIT_CRON = "5 * * * *"  # hourly: the stream holds at most about an hour of records


def record_materialization(
    context: AssetExecutionContext,
    offline: OfflineStoreResource,
    online: OnlineStoreResource,
    obj: str,
    rows: int,
    detail: str,
) -> None:
    """Record one materialization (a failure to record is logged, never fails the run)."""
    log = audit.for_store(online.store(), offline.store(), state_dir=online.state_dir, channel="dagster")
    log.record("materialize", obj, rows, detail=detail, request_id=context.run_id)


def build_audit_asset() -> dg.AssetsDefinition:
    @dg.asset(
        key=audit_log_key(),
        group_name="lifecycle",
        description=(
            "The audit log (who read or wrote which feature group, by role): the Redis stream "
            "compacted into Parquet partitions _audit/date=D/ of the offline store, then trimmed."
        ),
        kinds={"redis", "parquet"},
        tags={"skewless/kind": "lifecycle"},
    )
    def _audit_log(
        context: AssetExecutionContext, offline: OfflineStoreResource, online: OnlineStoreResource
    ) -> dg.MaterializeResult:
        done = audit.compact(online.store(), offline.store())
        context.log.info(
            f"audit log: {done['entries']} entries in {len(done['pieces'])} pieces, "
            f"{done['trimmed']} trimmed from the stream"
        )
        return dg.MaterializeResult(
            metadata={
                "entries_compacted": done["entries"],
                "pieces_written": len(done["pieces"]),
                "stream_entries_trimmed": done["trimmed"],
                "pieces": dg.MetadataValue.json(done["pieces"]),
            }
        )

    return _audit_log


def audit_definitions() -> dg.Definitions:
    """The compaction asset, its job and its hourly schedule."""
    job = dg.define_asset_job(
        name=AUDIT_JOB,
        selection=dg.AssetSelection.assets(audit_log_key()),
        description="Compact the audit stream into Parquet partitions and trim it.",
    )
    return dg.Definitions(
        assets=[build_audit_asset()],
        jobs=[job],
        schedules=[dg.ScheduleDefinition(job=job, cron_schedule=AUDIT_CRON)],
    )
