"""The Dagster instance settings streaming relies on (`$DAGSTER_HOME/dagster.yaml`).

- `run_monitoring`: the daemon marks runs stuck in STARTING failed after `start_timeout_seconds`
  and fails a STARTED run that outlives its `dagster/max_runtime` tag (stream runs carry one), so
  a micro-batch killed with -9 does not show as running forever. With the default run launcher
  the daemon cannot see that the run's process died (no worker health check), so the stream
  sensor also checks the pid a run records; correctness never waits for the daemon.
- `run_retries`: crashed runs of the daily assets are retried once; only crashes
  (`retry_on_asset_or_op_failure: false`: a failed check must stay failed). Stream runs opt out
  with `dagster/max_retries: 0` because their sensor re-requests a dead range itself.

`python -m skewless.sensors.instance $DAGSTER_HOME` writes the file, or appends the blocks a
file written earlier lacks (the Makefile's `ui` target and `skewless demo` run it); existing
settings are kept. It then marks runs whose process is gone failed (`sensors.dead_runs`).
"""

from __future__ import annotations

import sys
from pathlib import Path

BLOCKS: dict[str, str] = {
    "telemetry": "telemetry:\n  enabled: false\n",
    "run_monitoring": (
        "run_monitoring:\n"
        "  enabled: true\n"
        "  start_timeout_seconds: 180\n"
        "  cancel_timeout_seconds: 180\n"
        "  poll_interval_seconds: 30\n"
    ),
    "run_retries": "run_retries:\n  enabled: true\n  max_retries: 1\n  retry_on_asset_or_op_failure: false\n",
}


def write_instance_yaml(dagster_home: str | Path) -> Path:
    """Create or extend `dagster.yaml` with the blocks above; returns its path."""
    path = Path(dagster_home) / "dagster.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    present = {line.split(":", 1)[0] for line in text.splitlines() if line and not line[0].isspace()}
    missing = [block for key, block in BLOCKS.items() if key not in present]
    if missing or not path.exists():
        if text and not text.endswith("\n"):
            text += "\n"
        path.write_text(text + "".join(missing))
    return path


if __name__ == "__main__":
    print(write_instance_yaml(sys.argv[1]))
    import os

    os.environ["DAGSTER_HOME"] = str(Path(sys.argv[1]).resolve())
    from dagster import DagsterInstance

    from skewless.sensors.dead_runs import fail_dead_runs

    with DagsterInstance.get() as instance:
        for run_id in fail_dead_runs(instance):
            print(f"run {run_id}: its process is gone, marked failed")
