"""The Dagster instance settings streaming relies on (`$DAGSTER_HOME/dagster.yaml`).

- `run_monitoring`: the daemon marks runs stuck in STARTING failed after `start_timeout_seconds`
  and fails a STARTED run that outlives its `dagster/max_runtime` tag (stream runs carry one), so
  a micro-batch killed with -9 does not show as running forever. With the default run launcher
  the daemon cannot see that the run's process died (no worker health check), so the stream
  sensor also checks the pid a run records; correctness never waits for the daemon.
- `run_retries`: crashed runs of the daily assets are retried once; only crashes
  (`retry_on_asset_or_op_failure: false`: a failed check must stay failed). Stream runs opt out
  with `dagster/max_retries: 0` because their sensor re-requests a dead range itself.
- `storage` (only when `SKEWLESS_DAGSTER_POSTGRES_URL` is set): run, event log and schedule
  storage on PostgreSQL (dagster-postgres), so run history, asset materializations, asset check
  results and sensor cursors live in a database that outlives the machine and is shared by the
  webserver, the daemon and every run worker. SQLite (the default, files under
  `$DAGSTER_HOME`) is one machine's and grows ~135 KB a run. The block names the variable
  (`postgres_url: {env: SKEWLESS_DAGSTER_POSTGRES_URL}`) instead of copying the URL, so a
  password never lands in `dagster.yaml` and every process reads the URL it was started with.

`python -m skewless.sensors.instance $DAGSTER_HOME` writes the file, or appends the blocks a
file written earlier lacks (the Makefile's `ui` target and `skewless demo` run it); existing
settings are kept (a `storage` / `run_storage` / `event_log_storage` / `schedule_storage` the
user wrote is never replaced). It then marks runs whose process is gone failed
(`sensors.dead_runs`). Switching an existing SQLite instance to PostgreSQL starts an empty
history there: Dagster has no migration between the two.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from skewless.errors import SkewlessError

POSTGRES_URL_VARIABLE = "SKEWLESS_DAGSTER_POSTGRES_URL"
# The driver must be named. SQLAlchemy 2.1 (what dagster 1.13 resolves to) maps a bare
# `postgresql://` to psycopg 3, which dagster-postgres does not declare and cannot use: psycopg 3
# binds parameters on the server and `NOTIFY run_events, $1` is a syntax error (tried). So the
# URL names psycopg2, the driver dagster-postgres installs.
POSTGRES_SCHEME = "postgresql+psycopg2"
# any of these in dagster.yaml means the user chose the storage: never add ours beside it
STORAGE_KEYS = frozenset({"storage", "run_storage", "event_log_storage", "schedule_storage"})

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

POSTGRES_STORAGE_BLOCK = (
    "storage:  # run, event log and schedule storage on PostgreSQL (skewless.sensors.instance)\n"
    "  postgres:\n"
    "    postgres_url:\n"
    f"      env: {POSTGRES_URL_VARIABLE}\n"
)


class InstanceConfigError(SkewlessError):
    """The instance settings cannot work as configured (raised before Dagster would fail later,
    in every process, with a less direct message)."""


def postgres_url(environ: Mapping[str, str] | None = None) -> str | None:
    """`SKEWLESS_DAGSTER_POSTGRES_URL` if set (checked), else None: the instance stays on SQLite."""
    env = os.environ if environ is None else environ
    url = env.get(POSTGRES_URL_VARIABLE, "").strip()
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme != POSTGRES_SCHEME:
        suggested = parts._replace(scheme=POSTGRES_SCHEME).geturl() if parts.netloc else None
        hint = f": write {suggested}" if suggested and parts.scheme in ("postgres", "postgresql") else ""
        raise InstanceConfigError(
            f"{POSTGRES_URL_VARIABLE} must be a {POSTGRES_SCHEME}:// URL (SQLAlchemy 2.1 takes a bare "
            f"postgresql:// for psycopg 3, which dagster-postgres cannot use){hint}; "
            f"got scheme {parts.scheme!r}"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise InstanceConfigError(
            f"{POSTGRES_URL_VARIABLE} must name a host and a database: "
            f"{POSTGRES_SCHEME}://user[:password]@host:5432/db"
        )
    return url


def instance_blocks(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The top-level blocks skewless wants in `dagster.yaml`, storage first when configured."""
    if postgres_url(environ) is None:
        return dict(BLOCKS)
    return {"storage": POSTGRES_STORAGE_BLOCK, **BLOCKS}


def write_instance_yaml(dagster_home: str | Path, environ: Mapping[str, str] | None = None) -> Path:
    """Create or extend `dagster.yaml` with the blocks above; returns its path.

    Raises `InstanceConfigError` when the file keeps the instance on PostgreSQL through
    `SKEWLESS_DAGSTER_POSTGRES_URL` but the variable is not set here: Dagster would only fail
    when the webserver, the daemon or a run first opens the instance.
    """
    env = os.environ if environ is None else environ
    path = Path(dagster_home) / "dagster.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else ""
    present = {line.split(":", 1)[0].strip() for line in text.splitlines() if line and not line[0].isspace()}
    blocks = instance_blocks(env)
    if present & STORAGE_KEYS:
        blocks.pop("storage", None)
    if f"env: {POSTGRES_URL_VARIABLE}" in text and postgres_url(env) is None:
        raise InstanceConfigError(
            f"{path} keeps the Dagster instance on PostgreSQL through {POSTGRES_URL_VARIABLE}, "
            "which is not set: set it (postgresql+psycopg2://user@host:5432/db), or remove the `storage` "
            "block to go back to SQLite under DAGSTER_HOME"
        )
    missing = [block for key, block in blocks.items() if key not in present]
    if missing or not path.exists():
        if text and not text.endswith("\n"):
            text += "\n"
        path.write_text(text + "".join(missing))
    return path


if __name__ == "__main__":
    print(write_instance_yaml(sys.argv[1]))
    os.environ["DAGSTER_HOME"] = str(Path(sys.argv[1]).resolve())
    from dagster import DagsterInstance

    from skewless.sensors.dead_runs import fail_dead_runs

    with DagsterInstance.get() as instance:
        print(f"instance storage: {type(instance.run_storage).__name__}")
        for run_id in fail_dead_runs(instance):
            print(f"run {run_id}: its process is gone, marked failed")
