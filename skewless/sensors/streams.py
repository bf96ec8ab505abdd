"""Sensor-triggered micro-batches: a job and a cursor-keeping sensor per stream source.

The sensor's cursor is the last stream entry id it requested a batch for; each tick that sees
a newer entry requests one run covering every entry since (all new events of a tick in one
run), keyed by the id range so a tick evaluated twice never launches a duplicate. The job
runs in process: Dagster's run overhead, not the work, dominates a micro-batch.
"""

import dagster as dg

from skewless.language.source import Source
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.storage import streams


def _in_process_job(name: str, description: str, op: dg.OpDefinition) -> dg.JobDefinition:
    """A one-op job on the in-process executor: a micro-batch's cost is Dagster's run overhead."""

    @dg.job(name=name, executor_def=dg.in_process_executor, description=description)
    def _job() -> None:
        op()

    return _job


class StreamBatchConfig(dg.Config):
    after: str = "0"
    until: str


def build_stream_job(repo: FeatureRepository, source: str) -> dg.JobDefinition:
    @dg.op(name=f"apply_{source}_stream")
    def apply_batch(
        context: dg.OpExecutionContext,
        config: StreamBatchConfig,
        offline: OfflineStoreResource,
        online: OnlineStoreResource,
    ) -> None:
        from skewless.sensors.microbatch import apply_stream_batch

        stats = apply_stream_batch(repo, offline.store(), online.store(), source, config.after, config.until)
        context.log.info(f"stream {source} ({config.after}, {config.until}]: {stats}")

    return _in_process_job(
        f"stream_{source}",
        f"Apply new pushed events of source '{source}' to the online and offline stores.",
        apply_batch,
    )


class LandedFilesConfig(dg.Config):
    files: list[str]


def build_landing_job(repo: FeatureRepository, source: str) -> dg.JobDefinition:
    """Apply Parquet files newly landed in a file source's folder, like pushed events."""

    @dg.op(name=f"apply_{source}_files")
    def apply_files(
        context: dg.OpExecutionContext,
        config: LandedFilesConfig,
        offline: OfflineStoreResource,
        online: OnlineStoreResource,
    ) -> None:
        import polars as pl

        from skewless.sensors.microbatch import apply_rows

        rows = pl.concat([pl.read_parquet(f) for f in config.files], how="vertical_relaxed")
        stats = apply_rows(repo, offline.store(), online.store(), source, rows)
        context.log.info(f"{len(config.files)} landed files of {source}: {stats}")

    return _in_process_job(
        f"landed_{source}",
        f"Apply new Parquet files of source '{source}' to the online and offline stores.",
        apply_files,
    )


def build_landing_sensor(source: Source, job: dg.JobDefinition, interval_s: int = 5) -> dg.SensorDefinition:
    """New files in the source's folder -> one run for all of them; the cursor lists seen files."""

    @dg.sensor(
        name=f"landed_{source.name}_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a micro-batch when Parquet files land in source '{source.name}'.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        import json

        seen = set(json.loads(context.cursor)) if context.cursor else None
        files = source.files(include_pushed=False)  # type: ignore[attr-defined]
        if seen is None:  # first tick: what is there now belongs to the batch path
            return dg.SensorResult(run_requests=[], cursor=json.dumps(files))
        new = [f for f in files if f not in seen]
        if not new:
            return dg.SkipReason(f"no new files in source '{source.name}'")
        request = dg.RunRequest(
            run_key=f"{source.name}:{new[-1]}:{len(files)}",
            run_config={"ops": {f"apply_{source.name}_files": {"config": {"files": new}}}},
        )
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(sorted(seen | set(new))))

    return _sensor


def build_stream_sensor(source: str, job: dg.JobDefinition, interval_s: int = 5) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"stream_{source}_sensor",
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"online"},
        description=f"Requests a micro-batch when new events are pushed to source '{source}'.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        store = context.resources.online.store()
        newest = streams.newest_id(store, source)
        after = context.cursor or streams.applied(store, source) or "0"
        if newest is None or newest == after:
            return dg.SkipReason(f"no new events on source '{source}'")
        request = dg.RunRequest(
            run_key=f"{source}:{after}:{newest}",
            run_config={"ops": {f"apply_{source}_stream": {"config": {"after": after, "until": newest}}}},
        )
        return dg.SensorResult(run_requests=[request], cursor=newest)

    return _sensor
