"""A backfill fanned out as runs of N days, run side by side, on any executor (and Celery workers).

What spreads work over processes and machines in Dagster is *steps*: the multiprocess executor
runs a run's steps in child processes, dagster-celery sends each step to a worker as a Celery
task. A run of a partitioned asset is one step per asset whatever its number of days, so a
single-run backfill of 60 days is two steps (offline, then online) of one group version, and
only one worker would ever work on it. Cutting the backfill into runs of N days
(`BackfillPolicy.multi_run(N)`, `SKEWLESS_PARTITIONS_PER_RUN`) makes 60/N independent runs
whose steps any worker can take; Dagster's backfill daemon does the cutting for a backfill
launched in the UI, and its run coordinator (`max_concurrent_runs`) runs them side by side.

`run_backfill` does the same from Python, without a daemon, for tests and benchmarks: one
`dagster job execute` process per run (Dagster's own run entry point, so each run is recorded
in the instance like any other: events, materializations per partition, check results), at
most `concurrent_runs` at once. `CeleryWorkers` starts and stops real `celery worker`
processes. `backfill` puts them together: a range of days, an executor, a number of workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

BACKFILL_TAG = "skewless/backfill"
CELERY_APP = "skewless.feature_assets.celery_app"


def run_ranges(first: date, last: date, partitions_per_run: int) -> list[tuple[date, date]]:
    """The days `first..last` (inclusive) cut into runs of `partitions_per_run` days, in order,
    as Dagster's `multi_run(N)` backfill policy cuts them (0: one run)."""
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    if not days:
        raise ValueError(f"empty backfill: {first} is after {last}")
    size = partitions_per_run or len(days)
    return [(days[i], days[min(i + size, len(days)) - 1]) for i in range(0, len(days), size)]


@dataclass
class StepRun:
    """Where one step of one run ran: its worker (a Celery worker's name, else the host
    process) and process id, read back from the run's event log."""

    run_id: str
    step_key: str
    worker: str
    pid: int | None
    seconds: float | None


@dataclass
class BackfillResult:
    """The runs of one backfill and the steps they ran, as the instance recorded them."""

    backfill_id: str
    ranges: list[tuple[date, date]]
    run_ids: list[str]
    statuses: dict[str, str]
    steps: list[StepRun] = field(default_factory=list)
    seconds: float = 0.0
    failure_log: str = ""  # the last lines of each run process's output, when a run failed

    @property
    def ok(self) -> bool:
        return len(self.run_ids) == len(self.ranges) and all(s == "SUCCESS" for s in self.statuses.values())

    @property
    def workers(self) -> set[str]:
        """Distinct workers that ran steps (Celery worker names, or `pid N` for other executors)."""
        return {s.worker for s in self.steps}

    @property
    def pids(self) -> set[int]:
        return {s.pid for s in self.steps if s.pid is not None}


def step_runs(instance: dg.DagsterInstance, run_id: str) -> list[StepRun]:
    """Each step of a run with the worker that ran it: dagster-celery's engine event
    "Executing steps ... in celery worker" names the worker (`Celery worker` metadata); the
    step's own events carry the pid of the process that ran it."""
    celery_worker: dict[str, str] = {}
    started: dict[str, tuple[int | None, float]] = {}
    finished: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT:
            data = event.engine_event_data
            metadata = data.metadata if data is not None else {}
            worker = metadata.get("Celery worker")
            if worker is not None:
                celery_worker[event.step_key] = str(getattr(worker, "value", worker))
        elif event.event_type == dg.DagsterEventType.STEP_START:
            started[event.step_key] = (event.pid, record.timestamp)
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            finished[event.step_key] = record.timestamp
    steps = []
    for key, (pid, at) in started.items():
        end = finished.get(key)
        steps.append(
            StepRun(
                run_id=run_id,
                step_key=key,
                worker=celery_worker.get(key, f"pid {pid}"),
                pid=pid,
                seconds=None if end is None else end - at,
            )
        )
    return steps


def prepare_instance(dagster_home: str | Path) -> None:
    """Create the instance's storage (tables, SQLite files) once, before run processes start:
    two `dagster job execute` processes creating a new SQLite instance at once race on its
    schema ("table alembic_version already exists")."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)
        instance.get_latest_materialization_event(dg.AssetKey("__skewless_init__"))
        instance.all_instigator_state()


def _execute_command(module: str, attribute: str, job_name: str, tags: Mapping[str, str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        module,
        "-a",
        attribute,
        "-j",
        job_name,
        "--tags",
        json.dumps(dict(tags)),
    ]


def run_backfill(
    module: str,
    first: date,
    last: date,
    dagster_home: str | Path,
    *,
    partitions_per_run: int = 1,
    concurrent_runs: int = 2,
    attribute: str = "defs",
    job_name: str = "daily_features",
    env: Mapping[str, str] | None = None,
    working_directory: str | Path | None = None,
    timeout: float | None = None,
) -> BackfillResult:
    """Backfill `first..last` of `job_name` (of the `Definitions` at `module.attribute`) as runs
    of `partitions_per_run` days, `concurrent_runs` at a time, each a `dagster job execute`
    process on the instance in `dagster_home`.

    The executor is whatever the definitions name (`SKEWLESS_EXECUTOR` et al. in `env`, which
    every run process, and so every step process, inherits). Returns the runs with their
    status and, from their event logs, the worker and pid of every step. Raises
    `TimeoutError` (after stopping the run processes it started) if the backfill takes longer
    than `timeout` seconds (None: no limit).
    """
    backfill_id = uuid.uuid4().hex[:12]
    ranges = run_ranges(first, last, partitions_per_run)
    prepare_instance(dagster_home)
    child_env = {**os.environ, **(env or {}), "DAGSTER_HOME": str(dagster_home)}
    cwd = str(working_directory or os.getcwd())
    pending = list(ranges)
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    logs: list[Path] = []
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix=f"backfill-{backfill_id}-"))
    try:
        while pending or running:
            while pending and len(running) < max(1, concurrent_runs):
                start, end = pending.pop(0)
                tags = {
                    "dagster/asset_partition_range_start": start.isoformat(),
                    "dagster/asset_partition_range_end": end.isoformat(),
                    BACKFILL_TAG: backfill_id,
                }
                log = log_dir / f"run-{start.isoformat()}.log"
                logs.append(log)
                with open(log, "wb") as out:
                    process = subprocess.Popen(
                        _execute_command(module, attribute, job_name, tags),
                        env=child_env,
                        cwd=cwd,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                running.append((process, log))
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"backfill {backfill_id} ({first}..{last}) still running after {timeout:.0f} s"
                )
            time.sleep(0.1)
            running = [(p, log) for p, log in running if p.poll() is None]
    finally:
        for process, _ in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    seconds = time.monotonic() - started
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        runs = sorted(runs, key=lambda r: r.tags.get("dagster/asset_partition_range_start", ""))
        steps = [step for run in runs for step in step_runs(instance, run.run_id)]
    result = BackfillResult(
        backfill_id=backfill_id,
        ranges=ranges,
        run_ids=[r.run_id for r in runs],
        statuses={r.run_id: r.status.value for r in runs},
        steps=steps,
        seconds=seconds,
    )
    if not result.ok:
        result.failure_log = "\n".join(
            f"--- {log.name}\n" + log.read_text(errors="replace")[-3000:] for log in logs
        )
    return result


class CeleryWorkers:
    """`n` real Celery worker processes (dagster-celery's tasks, `-c 1` each, named
    `w1@<host>`, `w2@<host>`…) on the broker in `env["SKEWLESS_CELERY_BROKER"]`.

    Each worker is a process group of its own (`start_new_session`), stopped in `stop()` by
    its id: SIGTERM (Celery's warm shutdown), then SIGKILL of the group after `grace` seconds,
    so no worker or pool child outlives its owner. `wait_ready()` pings them through the
    broker until every one answers.
    """

    def __init__(
        self,
        n: int,
        env: Mapping[str, str],
        folder: str | Path,
        concurrency: int = 1,
        queues: Sequence[str] = ("dagster",),
    ) -> None:
        if not env.get("SKEWLESS_CELERY_BROKER"):
            raise ValueError("CeleryWorkers needs SKEWLESS_CELERY_BROKER in env")
        self.n, self.env, self.folder = n, {**os.environ, **env}, Path(folder)
        self.concurrency, self.queues = concurrency, list(queues)
        self.names = [f"w{i + 1}" for i in range(n)]
        self.processes: list[subprocess.Popen[bytes]] = []

    def command(self, name: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            CELERY_APP,
            "worker",
            "-c",
            str(self.concurrency),
            "-n",
            f"{name}@%h",
            "-Q",
            ",".join(self.queues),
            "--prefetch-multiplier=1",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]

    def start(self) -> CeleryWorkers:
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in self.names:
            with open(self.folder / f"{name}.log", "wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        self.command(name),
                        env=self.env,
                        cwd=self.folder,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        return self

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_ready(self, timeout: float = 30.0) -> list[str]:
        """The workers' full names (`w1@host`) once every one answers a ping; raises
        `RuntimeError` with the workers' logs if one exited or did not answer in time."""
        from skewless.feature_assets.celery_app import app_for

        app = app_for(self.env["SKEWLESS_CELERY_BROKER"], self.env.get("SKEWLESS_CELERY_BACKEND"))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for name, process in zip(self.names, self.processes, strict=True):
                    if process.poll() is not None:
                        raise RuntimeError(
                            f"celery worker {name} exited ({process.returncode}):\n{self.log(name)}"
                        )
                replies = app.control.ping(timeout=1.0) or []
                answered = sorted(host for reply in replies for host in reply)
                if len({a.split("@", 1)[0] for a in answered} & set(self.names)) == len(self.names):
                    return answered
            logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.names)
            raise RuntimeError(f"celery workers did not answer within {timeout:.0f} s:\n{logs}")
        finally:
            app.close()

    def stop(self, grace: float = 10.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # the pool children too, even if the main process already exited
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.processes = []

    def __enter__(self) -> CeleryWorkers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _workers(executor: str, n: int, env: Mapping[str, str], folder: Path) -> Iterator[list[str]]:
    if executor != "celery":
        yield []
        return
    with CeleryWorkers(n, env, folder) as workers:
        yield workers.wait_ready()


def backfill(
    module: str,
    first: date,
    last: date,
    dagster_home: str | Path,
    *,
    executor: str = "multiprocess",
    workers: int = 2,
    partitions_per_run: int = 1,
    env: Mapping[str, str] | None = None,
    attribute: str = "defs",
    job_name: str = "daily_features",
    working_directory: str | Path | None = None,
    timeout: float | None = None,
) -> BackfillResult:
    """One call for benchmarks: backfill `first..last` on `executor` with `workers` workers.

    `workers` is the number of steps that can run at once, whatever the executor, so 1 and 2
    workers compare alike across executors:
    - `in_process`: the runs one after another, each in one process (`workers` ignored);
    - `multiprocess`: `workers` runs at a time, each on the multiprocess executor with
      `max_concurrent` 1 (unless `env` sets `SKEWLESS_MAX_CONCURRENT`): a run's independent
      steps (one per group version) would otherwise run side by side too;
    - `celery`: `workers` Celery workers (`-c 1`) started for the backfill and stopped after,
      `workers` runs at a time sending them their steps; `env` must name
      `SKEWLESS_CELERY_BROKER` (a Redis URL; the backend defaults to it).

    `env` also carries the stores (`SKEWLESS_HOME`, `SKEWLESS_OFFLINE_ROOT`,
    `SKEWLESS_REDIS_URL`, `SKEWLESS_KEY_PREFIX`) the definitions module reads.
    """
    settings = {
        **({"SKEWLESS_MAX_CONCURRENT": "1"} if executor == "multiprocess" else {}),
        **(env or {}),
        "SKEWLESS_EXECUTOR": executor,
        "SKEWLESS_PARTITIONS_PER_RUN": str(partitions_per_run),
    }
    concurrent = 1 if executor == "in_process" else workers
    folder = Path(dagster_home) / "celery-workers"
    with _workers(executor, workers, settings, folder):
        return run_backfill(
            module,
            first,
            last,
            dagster_home,
            partitions_per_run=partitions_per_run,
            concurrent_runs=concurrent,
            attribute=attribute,
            job_name=job_name,
            env=settings,
            working_directory=working_directory,
            timeout=timeout,
        )
