"""A run whose process is killed with -9 ends as failed, not "Started" for ever (issue 12 items 1, 19).

The drill: a real process materializes an asset (using the stores' resource) on a real
on-disk Dagster instance; it is killed with SIGKILL while the run is STARTED. Then the
`failed_dead_runs` sensor, evaluated as Dagster evaluates sensors, marks it failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from skewless.sensors.dead_runs import (
    HOST_TAG,
    PID_TAG,
    STARTED_TAG,
    build_dead_run_sensor,
    fail_dead_runs,
    process_is_gone,
    process_tags,
)

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import dagster as dg
    from skewless.resources.stores import OfflineStoreResource

    @dg.asset
    def slow(offline: OfflineStoreResource) -> None:
        print("asset started", flush=True)
        time.sleep(120)

    with dg.DagsterInstance.get() as instance:
        resources = {"offline": OfflineStoreResource(root=sys.argv[1])}
        dg.materialize([slow], instance=instance, resources=resources)
    """
)


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as inst:
        yield inst


def _started_run(instance: dg.DagsterInstance, deadline: float) -> dg.DagsterRun:
    while time.time() < deadline:
        runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        if runs and PID_TAG in runs[0].tags:
            return runs[0]
        time.sleep(0.2)
    raise AssertionError("the run never reached STARTED with its process recorded")


def test_a_killed_run_is_marked_failed_by_the_sensor(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    script = tmp_path / "slow_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "offline")],
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run = _started_run(instance, time.time() + 90)
        assert run.tags[PID_TAG] == str(proc.pid)
        assert run.tags[HOST_TAG] == socket.gethostname()
        # alive: the sensor leaves it alone
        sensor = build_dead_run_sensor()
        assert fail_dead_runs(instance) == []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # the zombie
        with dg.build_sensor_context(instance=instance) as context:
            result = sensor(context)
        assert run.run_id in str(result.skip_message)
        after = instance.get_run_by_id(run.run_id)
        assert after.status == dg.DagsterRunStatus.FAILURE
        failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert any("is gone" in (e.message or "") for e in failures)
        # nothing left to do on the next tick
        assert fail_dead_runs(instance) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_only_processes_known_to_be_gone_count_as_dead() -> None:
    mine = process_tags()
    assert not process_is_gone(mine)
    assert not process_is_gone({})  # untagged: not ours to judge
    assert not process_is_gone({**mine, HOST_TAG: "another-host"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_is_gone({**mine, PID_TAG: str(dead.pid)})
    # the pid exists but is a different process (pid reuse): its start time differs
    assert process_is_gone({**mine, STARTED_TAG: "1"})
