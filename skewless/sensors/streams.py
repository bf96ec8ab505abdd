"""Sensor-triggered micro-batches: a job and a cursor-keeping sensor per stream source.

The sensor's cursor is the last stream entry id it requested a batch for; each tick that sees
a newer entry requests one run covering every entry since (all new events of a tick in one
run), keyed by the id range so a tick evaluated twice never launches a duplicate. The job
runs in process: Dagster's run overhead, not the work, dominates a micro-batch.
"""

import dagster as dg

from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.storage import streams


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

    @dg.job(
        name=f"stream_{source}",
        executor_def=dg.in_process_executor,
        description=f"Apply new pushed events of source '{source}' to the online and offline stores.",
    )
    def stream_job() -> None:
        apply_batch()

    return stream_job


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
