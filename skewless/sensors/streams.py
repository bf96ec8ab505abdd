"""Sensor-triggered micro-batches: a job and a sensor per stream source.

Exactly once, without relying on the daemon noticing a crash: the sensor requests the range
after the stream's *applied marker* (written by a micro-batch only once it has finished),
never after what it merely requested. One range is in flight at a time; its run is found by
tags on the next tick. While that run is queued or alive the sensor waits; once it is gone
without moving the marker (failed, canceled, killed -9 — a STARTED run whose recorded
process is dead, or older than `stale_after_s`) the same range is requested again under a
new run key (`...:retry<n>`); Dagster's run-key dedupe makes a re-evaluated tick harmless.
Each tick that finds the marker current requests one run for every entry since (all new
events of a tick in one run). The job runs in process: Dagster's run overhead, not the work,
dominates a micro-batch. Run monitoring (`dagster/max_runtime`, see `instance.py`) marks a
hung run failed in the UI as well, and stream runs opt out of run retries: the sensor is
their retry mechanism, and a second one would only replay ranges already redone.
"""

import json
import time
from dataclasses import dataclass

import dagster as dg

from skewless.language.source import Source
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource, OnlineStoreResource
from skewless.sensors.dead_runs import process_is_gone, record_run_process
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

        # who runs this batch: lets the sensor tell a killed run from a slow one
        record_run_process(context.instance, context.run_id, context.dagster_run.tags)
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

        from skewless.language.source import FileSource
        from skewless.sensors.microbatch import apply_rows

        landed = next((s for s in repo.sources if s.name == source), None)
        if isinstance(landed, FileSource):  # name a corrupt or naive file before reading any
            landed.check_files(list(config.files))
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


SOURCE_TAG = "skewless/stream_source"
RANGE_TAG = "skewless/stream_range"
ATTEMPT_TAG = "skewless/stream_attempt"
STALE_AFTER_S = 600  # a micro-batch takes seconds; a run this old without finishing is dead

_WAITING = (dg.DagsterRunStatus.QUEUED,)
_STARTING = (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.CANCELING)


def id_key(entry: str) -> tuple[int, int]:
    """A stream entry id as a comparable pair ("0" and "" are before every entry)."""
    if entry in ("", "0", "0-0"):
        return (0, 0)
    ms, _, seq = entry.partition("-")
    return (int(ms), int(seq or 0))


@dataclass(frozen=True)
class Pending:
    """The range the sensor last requested (its cursor): `after < id <= until`."""

    after: str
    until: str
    attempt: int = 0

    def encode(self) -> str:
        return json.dumps({"after": self.after, "until": self.until, "attempt": self.attempt})

    @staticmethod
    def decode(cursor: str | None) -> "Pending | None":
        """None for no cursor or an old-style cursor (an id: the marker decides anyway)."""
        if not cursor or not cursor.startswith("{"):
            return None
        data = json.loads(cursor)
        return Pending(data["after"], data["until"], int(data.get("attempt", 0)))


def run_is_live(record: dg.RunRecord, stale_after_s: float, now: float | None = None) -> bool:
    """Could this run still apply its range? Queued: yes. Finished: no. Started: only if its
    recorded process exists (same host) and it is younger than `stale_after_s`."""
    now = time.time() if now is None else now
    run = record.dagster_run
    if run.status in _WAITING:
        return True
    began = record.start_time or record.create_timestamp.timestamp()
    young = now - began < stale_after_s
    if run.status in _STARTING:
        return young
    if run.status != dg.DagsterRunStatus.STARTED:
        return False  # SUCCESS, FAILURE, CANCELED
    if process_is_gone(run.tags):
        return False
    return young


def range_runs(instance: dg.DagsterInstance, source: str, pending: Pending) -> list[dg.RunRecord]:
    tags = {SOURCE_TAG: source, RANGE_TAG: f"{pending.after}..{pending.until}"}
    return list(instance.get_run_records(filters=dg.RunsFilter(tags=tags)))


def stream_run_request(source: str, pending: Pending, stale_after_s: float) -> dg.RunRequest:
    """The run for one range; attempt 0 keeps the plain range key, retries add a counter."""
    key = f"{source}:{pending.after}:{pending.until}"
    return dg.RunRequest(
        run_key=key if pending.attempt == 0 else f"{key}:retry{pending.attempt}",
        run_config={
            "ops": {f"apply_{source}_stream": {"config": {"after": pending.after, "until": pending.until}}}
        },
        tags={
            SOURCE_TAG: source,
            RANGE_TAG: f"{pending.after}..{pending.until}",
            ATTEMPT_TAG: str(pending.attempt),
            "dagster/max_runtime": str(int(stale_after_s)),  # run monitoring fails hung runs
            "dagster/max_retries": "0",  # the sensor re-requests; see the module docstring
        },
    )


def build_stream_sensor(
    source: str, job: dg.JobDefinition, interval_s: int = 5, stale_after_s: float = STALE_AFTER_S
) -> dg.SensorDefinition:
    """Request the next unapplied range, or the same range again once its run is dead."""

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
        applied = streams.applied(store, source) or "0"
        pending = Pending.decode(context.cursor)
        if pending is not None and id_key(applied) < id_key(pending.until):
            runs = range_runs(context.instance, source, pending)
            if any(run_is_live(r, stale_after_s) for r in runs):
                return dg.SkipReason(f"range ({pending.after}, {pending.until}] of '{source}' in progress")
            if runs:  # every run of it ended (or died) without marking it applied: again
                attempts = max(int(r.dagster_run.tags.get(ATTEMPT_TAG, "0")) for r in runs)
                pending = Pending(pending.after, pending.until, max(attempts, pending.attempt) + 1)
            # no run yet: re-request the same key (Dagster launches it at most once)
            request = stream_run_request(source, pending, stale_after_s)
            return dg.SensorResult(run_requests=[request], cursor=pending.encode())
        newest = streams.newest_id(store, source)
        if newest is None or id_key(newest) <= id_key(applied):
            return dg.SkipReason(f"no new events on source '{source}'")
        pending = Pending(applied, newest)
        return dg.SensorResult(
            run_requests=[stream_run_request(source, pending, stale_after_s)], cursor=pending.encode()
        )

    return _sensor
