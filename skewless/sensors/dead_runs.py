"""Runs whose process died (OOM killer, kill -9, a closed laptop) end as failed, not as zombies.

Dagster's run monitoring cannot see a dead run worker under the default run launcher (it has
no worker health check), and runs executed in process (`skewless demo`, tests) have no
launcher at all: a run killed with -9 would show "Started" for ever. So every run that uses
the stores records who runs it — pid, the process's start time (a reused pid is not the same
process) and host — as run tags, when its resources are set up. `fail_dead_runs` reports a
STARTED run whose recorded process is gone as failed (with a message saying so), which also
lets Dagster's run retries pick it up. It runs at `skewless demo` and `make ui` start-up and
in the `failed_dead_runs` sensor (running by default, so no human action is needed).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

PID_TAG = "skewless/pid"
HOST_TAG = "skewless/host"
STARTED_TAG = "skewless/pid_started"  # the process's start time, in clock ticks since boot
_HOST = socket.gethostname()


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time since boot); None when there is no such
    process (or no /proc: then only the pid is compared)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    return raw.rsplit(")", 1)[1].split()[19]


def process_tags() -> dict[str, str]:
    """The tags naming this process."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: _HOST, STARTED_TAG: _process_start(pid) or ""}


def record_run_process(instance: dg.DagsterInstance, run_id: str, tags: Mapping[str, str]) -> None:
    """Tag the run with this process unless it already names it (one write per run)."""
    mine = process_tags()
    if all(tags.get(k) == v for k, v in mine.items()):
        return
    instance.add_run_tags(run_id, mine)


def process_is_gone(tags: Mapping[str, str]) -> bool:
    """True only when the tags name a process on this host that no longer exists."""
    pid, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if pid is None or host != _HOST:
        return False  # not ours to judge: another machine, or an untagged run
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    started = tags.get(STARTED_TAG)
    now = _process_start(int(pid))
    return bool(started) and now is not None and now != "" and now != started  # pid reused


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Report every STARTED run whose recorded process is gone as failed; their run ids."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING])
    )
    failed = []
    for record in records:
        run = record.dagster_run
        if process_is_gone(run.tags):
            instance.report_run_failed(
                run,
                message=(
                    f"run process {run.tags[PID_TAG]} on {run.tags[HOST_TAG]} is gone (killed, e.g. by "
                    "the OOM killer or kill -9) while the run was started: marked failed by skewless"
                ),
            )
            failed.append(run.run_id)
    return failed


def build_dead_run_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="failed_dead_runs",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Marks runs whose process died (kill -9, OOM) as failed, so retries can run.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        failed = fail_dead_runs(context.instance)
        if not failed:
            return dg.SkipReason("no dead runs")
        return dg.SkipReason(f"marked {len(failed)} dead runs failed: {', '.join(failed)}")

    return _sensor
