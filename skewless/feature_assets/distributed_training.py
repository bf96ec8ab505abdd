"""Training sets larger than one machine: the partitioned engine's buckets as Dagster steps.

Per feature service with labels, a job `<service>_v<N>_distributed_training_set` of three ops:

    prepare_training_set ──(one DynamicOutput per bucket)──> join_training_set_bucket (.map)
                                                                 │ (.collect)
                                                                 v
                                                          gather_training_set

- `prepare` plans exactly as the client does (`FeatureStore.plan_training_set`: same label
  checks, coverage rule, pruning), hash-partitions labels and feature rows into bucket
  folders and puts them, the plan and the labels in the run's work area on the offline store
  (`_work/<run id>/`, `client.work_area`);
- each `join` step downloads its bucket's folders, joins them, uploads the result folder: an
  executor may run it in another process (multiprocess) or on another machine (Celery);
- `gather` puts the results back in label order next to the labels, writes the training set
  where the asset writes it (`OfflineStore.write_training_set`: one atomic file), records a
  materialization of the training-set asset with the asset's metadata (`engine`
  "distributed", `buckets`), and deletes the work area.

A failed run keeps its work area, so Dagster's "re-execute from failure" resumes it: the
failed steps run again in a child run, reading the parent's bucket folders and the outputs
of the steps that succeeded (their values name the parent's area), and the child's gather
deletes it. What is never resumed is swept by the next run's `prepare`
(`sweep_work_areas`): areas of runs that ended in success or cancellation, of runs that
failed more than `keep_failed_hours` (24) ago, and of runs this instance does not know that
are as old; never an area whose run, or a re-execution of it, is still in progress. A
failed `prepare` deletes its own partial area at once (a failure hook): no re-execution
can use a scatter that did not finish. A run killed outright (kill -9) is marked failed by
run monitoring, so its area is swept like any failed run's.

Values passed between the ops are a few numbers, stored by `WorkAreaIOManager` in the same
work area: the default IO manager writes to the local `DAGSTER_HOME`, which Celery workers
on other machines do not share.

The training-set asset (`training_sets.py`) keeps its key and behaviour (one step, the
client's `auto` engine); this job is the other way to materialize it, for training sets
whose join should be spread over workers. Run it like any job (UI launchpad, `dagster job
execute -j scorer_v1_distributed_training_set`), with run config

    ops: {prepare_training_set: {config: {buckets: 8, allow_missing: false}}}

(`buckets` 0, the default: the partitioned engine's own estimate). The executor is the
definitions' (`SKEWLESS_EXECUTOR`). `run_distributed_training_set` runs it from Python on a
chosen executor and reports wall time and which worker ran which step.
"""

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg

from skewless.asset_keys import training_set_key
from skewless.compute.coverage import MissingPartitionsWarning
from skewless.feature_assets.backfill import (
    StepRun,
    _execute_command,
    _workers,
    prepare_instance,
    step_runs,
)
from skewless.feature_assets.training_sets import training_set_metadata
from skewless.language.feature_service import FeatureService
from skewless.repository import FeatureRepository
from skewless.resources.stores import OfflineStoreResource
from skewless.storage.offline import OfflineStore
from skewless.storage.offline_layout import work_key

WORK_IO = "training_work_io"
ENGINE = "distributed"
RUN_TAG = "skewless/distributed_run"


def distributed_job_name(service: FeatureService) -> str:
    return f"{service.name}_v{service.version}_distributed_training_set"


class DistributedTrainingSetConfig(dg.Config):
    """Run config of the distributed training-set job's first op."""

    buckets: int = 0
    """How many buckets (join steps); 0: the partitioned engine's estimate (at least 2)."""
    allow_missing: bool = False
    """As for the training-set asset: build from what is stored (with a warning) when
    offline partitions the labels need were never materialized."""
    keep_failed_hours: float = 24.0
    """How long a failed run's work area is kept for a re-execution from failure before a
    later run sweeps it."""


class WorkAreaIOManager(dg.ConfigurableIOManager):
    """Small JSON values between the job's ops, kept in the run's work area on the offline
    store (`root`), so steps on machines that share no disk can hand them on; deleted with
    the work area."""

    root: str

    def _store(self) -> OfflineStore:
        return OfflineStoreResource(root=self.root).store()

    @staticmethod
    def _key(identifier: list[str]) -> str:
        run_id, *rest = identifier
        return f"{work_key(run_id)}/io/" + "/".join(part.replace("/", "_") for part in rest) + ".json"

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        self._store().write(self._key(context.get_identifier()), json.dumps(obj).encode())

    def load_input(self, context: dg.InputContext) -> Any:
        upstream = context.upstream_output
        assert upstream is not None
        key = self._key(upstream.get_identifier())
        data = self._store().read_bytes(key)
        if data is None:
            raise FileNotFoundError(f"{key}: the work area of this run is gone (failed or finished)")
        return json.loads(data)


def build_distributed_training_job(repo: FeatureRepository, service: FeatureService) -> dg.JobDefinition:
    """The job above for one feature service (with labels)."""
    from skewless.client.work_area import WorkArea

    assert service.labels is not None
    labels_source = service.labels
    name = distributed_job_name(service)
    asset_key = training_set_key(service)

    def _feature_store(offline: OfflineStoreResource) -> Any:
        from skewless.client.feature_store import FeatureStore

        # the run's offline store only: training sets never touch the online one
        return FeatureStore(repo, offline=offline.store())

    @dg.failure_hook(required_resource_keys={"offline"})
    def _delete_partial_area(context: dg.HookContext) -> None:
        store = context.resources.offline.store()
        removed = store.delete_tree(work_key(context.run_id))
        context.log.info(f"step {context.step_key} failed: deleted its partial work area ({removed} files)")

    @dg.op(
        name="prepare_training_set",
        out=dg.DynamicOut(dict, io_manager_key=WORK_IO),
        description="Plan as the client does, scatter labels and feature rows into bucket folders "
        "in the run's work area on the offline store; one output per bucket.",
        tags={"skewless/service": service.name},
    )
    def prepare(
        context: dg.OpExecutionContext, config: DistributedTrainingSetConfig, offline: OfflineStoreResource
    ) -> Any:
        if config.buckets < 0:
            raise dg.Failure(f"buckets must be 0 (the estimate) or more, not {config.buckets}")
        store = _feature_store(offline)
        swept = sweep_work_areas(
            store.offline, context.instance, context.run_id, timedelta(hours=config.keep_failed_hours)
        )
        if swept:
            context.log.info(f"swept {len(swept)} stale work areas: {', '.join(swept)}")
        labels = labels_source.scan().collect()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", MissingPartitionsWarning)
            plan = store.plan_training_set(
                labels,
                service=service.ref,
                timestamp_column=labels_source.timestamp_field,
                allow_missing=config.allow_missing,
            )
        for warning in seen:
            context.log.warning(str(warning.message))
        area = WorkArea.for_run(store.offline, context.run_id)
        stats = area.scatter(plan, config.buckets or None)
        context.log.info(
            f"{service.ref}: {stats.label_rows} label rows in {stats.buckets} buckets "
            f"under {store.offline.location(area.prefix)}"
        )
        for bucket in range(stats.buckets):
            yield dg.DynamicOutput(
                {"work": area.prefix, "bucket": bucket, "buckets": stats.buckets, "groups": stats.groups},
                mapping_key=str(bucket),
            )

    @dg.op(
        name="join_training_set_bucket",
        out=dg.Out(dict, io_manager_key=WORK_IO),
        description="Join one bucket of every group (download its folders, join, upload the results).",
        tags={"skewless/service": service.name},
    )
    def join(context: dg.OpExecutionContext, item: dict, offline: OfflineStoreResource) -> dict:
        area = WorkArea(offline.store(), item["work"])
        started = time.perf_counter()
        groups = area.join(repo, item["bucket"])
        seconds = time.perf_counter() - started
        context.log.info(f"bucket {item['bucket']}: {groups} groups joined in {seconds:.2f} s")
        return {
            **item,
            "joined": groups,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "seconds": round(seconds, 3),
        }

    @dg.op(
        name="gather_training_set",
        out={},
        description="Results back in label order, the training set written (one atomic file) "
        "and its asset's materialization recorded; the work area deleted.",
        tags={"skewless/service": service.name},
    )
    def gather(context: dg.OpExecutionContext, joined: list[dict], offline: OfflineStoreResource) -> Any:
        if not joined:  # cannot happen (every bucket, even an empty one, has a step)
            raise dg.Failure("no bucket was joined")
        store = _feature_store(offline)
        area = WorkArea(store.offline, joined[0]["work"])
        frame = area.gather(repo)
        path = store.offline.write_training_set(
            service.name, service.version, frame, pii=store.pii_columns(service=service.ref)
        )
        buckets = joined[0]["buckets"]
        metadata = training_set_metadata(repo, service, store, frame, path, ENGINE, joined[0]["groups"])
        metadata["buckets"] = buckets
        context.log.info(f"{service.ref}: {frame.height} rows from {buckets} buckets, written to {path}")
        yield dg.AssetMaterialization(asset_key=asset_key, metadata=metadata)
        removed = area.delete()
        context.log.info(f"deleted the work area ({removed} files)")

    @dg.job(
        name=name,
        description=(
            f"Materialize the training set of {service.ref} ({asset_key.to_user_string()}) with its "
            "join spread over steps: one per bucket, each on any worker of the executor. Run "
            "config `ops.prepare_training_set.config.buckets` (0: the engine's estimate)."
        ),
        tags={"skewless/service": service.name, "skewless/version": f"v{service.version}"},
    )
    def _job() -> None:
        gather(prepare.with_hooks({_delete_partial_area})().map(join).collect())

    return _job


FINISHED_OK = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED)
ENDED = (*FINISHED_OK, dg.DagsterRunStatus.FAILURE)


def sweep_work_areas(
    store: OfflineStore,
    instance: dg.DagsterInstance,
    current_run_id: str,
    keep_failed: timedelta,
    now: datetime | None = None,
) -> list[str]:
    """Delete the work areas no run will use again (see the module doc); returns their run ids.

    Judged by the instance's run records: an area is kept while its run, or any run in its
    re-execution family (same `dagster/root_run_id`), is not finished, and for
    `keep_failed` after it was created when its run failed or is unknown to this instance
    (an area without its creation marker counts as old once its run has ended)."""
    from skewless.client.work_area import WorkArea

    now = now or datetime.now(UTC)
    swept: list[str] = []
    for run_id in WorkArea.run_ids(store):
        if run_id == current_run_id:
            continue
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status not in ENDED:
            continue
        family = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/root_run_id": run_id}), limit=50)
        if any(child.status not in ENDED for child in family):
            continue  # a re-execution from failure still reads this area
        area = WorkArea(store, work_key(run_id))
        if run is None or run.status == dg.DagsterRunStatus.FAILURE:
            created = area.created_at()
            if created is None and run is None:
                continue  # unknown run, no marker: nothing says it is stale
            if created is not None and now - created < keep_failed:
                continue
        area.delete()
        swept.append(run_id)
    return swept


# -- running it from Python (benchmarks, tests) ----------------------------------------------


@dataclass
class DistributedRunResult:
    """One run of the distributed job: wall time, where each step ran, where the set went."""

    run_id: str
    status: str
    seconds: float
    steps: list[StepRun] = field(default_factory=list)
    path: str | None = None
    buckets: int | None = None
    rows: int | None = None
    log: str = ""  # the run process's output, when it failed

    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS"

    @property
    def workers(self) -> dict[str, str]:
        """Step key → the worker that ran it (Celery worker name, else `pid N`)."""
        return {s.step_key: s.worker for s in self.steps}

    @property
    def pids(self) -> dict[str, int | None]:
        return {s.step_key: s.pid for s in self.steps}


def run_distributed_training_set(
    module: str,
    service: str,
    dagster_home: str | Path,
    *,
    executor: str = "multiprocess",
    workers: int = 2,
    buckets: int = 0,
    allow_missing: bool = False,
    env: Mapping[str, str] | None = None,
    attribute: str = "defs",
    working_directory: str | Path | None = None,
    timeout: float | None = None,
) -> DistributedRunResult:
    """Run `<service>_distributed_training_set` (`service` as `name_vN`, e.g. `fraud_model_v1`)
    of the `Definitions` at `module.attribute` as one `dagster job execute` process on the
    instance in `dagster_home`, on `executor` with `workers` steps at a time:
    `in_process` (one process, `workers` ignored), `multiprocess` (`max_concurrent` =
    `workers`), `celery` (`workers` Celery workers started for the run and stopped after;
    `env` must name `SKEWLESS_CELERY_BROKER`). `env` carries the stores as for `backfill`.

    Returns the wall time of the run process, each step's worker and pid (from the event
    log), the training set's location, buckets and rows (from its materialization). Raises
    `TimeoutError` after stopping the run if it takes longer than `timeout` seconds."""
    settings = {
        **({"SKEWLESS_MAX_CONCURRENT": str(workers)} if executor == "multiprocess" else {}),
        **(env or {}),
        "SKEWLESS_EXECUTOR": executor,
    }
    job_name = f"{service}_distributed_training_set"
    folder = Path(dagster_home) / "celery-workers"
    with _workers(executor, workers, settings, folder):
        return _run_job(
            module,
            job_name,
            dagster_home,
            run_config={
                "ops": {
                    "prepare_training_set": {"config": {"buckets": buckets, "allow_missing": allow_missing}}
                }
            },
            env=settings,
            attribute=attribute,
            working_directory=working_directory,
            timeout=timeout,
        )


def _run_job(
    module: str,
    job_name: str,
    dagster_home: str | Path,
    *,
    run_config: Mapping[str, Any],
    env: Mapping[str, str],
    attribute: str,
    working_directory: str | Path | None,
    timeout: float | None,
) -> DistributedRunResult:
    tag = uuid.uuid4().hex[:12]
    prepare_instance(dagster_home)
    child_env = {**os.environ, **env, "DAGSTER_HOME": str(dagster_home)}
    with tempfile.TemporaryDirectory(prefix="skewless-dist-run-") as tmp:
        config_file = Path(tmp) / "run_config.json"  # JSON is YAML
        config_file.write_text(json.dumps(run_config))
        log_file = Path(tmp) / "run.log"
        command = [*_execute_command(module, attribute, job_name, {RUN_TAG: tag}), "-c", str(config_file)]
        started = time.monotonic()
        with open(log_file, "wb") as out:
            process = subprocess.Popen(
                command,
                env=child_env,
                cwd=str(working_directory or os.getcwd()),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"{job_name} still running after {timeout:.0f} s") from None
            finally:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, 9)
                    process.wait()
        seconds = time.monotonic() - started
        log = log_file.read_text(errors="replace")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_TAG: tag}))
        if not runs:
            return DistributedRunResult("", "NOT_STARTED", seconds, log=log[-5000:])
        run = runs[0]
        result = DistributedRunResult(run.run_id, run.status.value, seconds, step_runs(instance, run.run_id))
        for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
            event = record.dagster_event
            materialization = event.step_materialization_data.materialization if event else None
            if materialization is None:
                continue
            metadata = materialization.metadata
            result.path = str(metadata["path"].value) if "path" in metadata else None
            result.buckets = int(metadata["buckets"].value) if "buckets" in metadata else None
            rows = metadata.get("dagster/row_count")
            result.rows = int(rows.value) if rows is not None else None
    if not result.ok:
        result.log = log[-5000:]
    return result
