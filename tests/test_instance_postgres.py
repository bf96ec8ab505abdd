"""The Dagster instance on a real PostgreSQL (issue 14 item 1): runs, materializations, asset
check results and sensor cursors are stored there and survive a restart.

A fresh database `skewless_test_<random>` is created for each test on the server named by
`SKEWLESS_TEST_POSTGRES_URL` (default `postgresql://postgres@127.0.0.1:5432/postgres`, the
server `make test` starts or installs with `.ci/install-postgres.sh`) and dropped after. When no
server answers, the tests that need one are skipped with the reason printed. The instance is
configured the way users configure it: `SKEWLESS_DAGSTER_POSTGRES_URL` plus
`write_instance_yaml`, then `DagsterInstance.get()`; what it stored is read back with plain SQL
as well as through a new instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg2
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from skewless.config import StoreConfig
from skewless.sensors.instance import (
    POSTGRES_URL_VARIABLE,
    InstanceConfigError,
    write_instance_yaml,
)
from tests.helpers import clicks_frame, landing_repo, make_events, materialize_days, small_repo

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("SKEWLESS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DAYS = ("2026-03-01", "2026-03-02")


def _with_database(url: str, name: str) -> str:
    """The instance's URL for database `name` (SQLAlchemy form, psycopg2 named)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))


def _libpq(url: str) -> str:
    """The same URL as libpq (psycopg2.connect) reads it: no driver in the scheme."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[str]:
    """The maintenance URL of a server that answers, or a skip saying why not."""
    try:
        psycopg2.connect(_libpq(ADMIN_URL), connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        reason = (
            f"PostgreSQL does not answer at {ADMIN_URL} ({str(exc).strip().splitlines()[0]}); "
            "`make test` installs and starts one with .ci/install-postgres.sh"
        )
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    yield ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    """A fresh, empty database for one test; dropped after, even with connections left open."""
    name = f"skewless_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(_libpq(postgres_admin))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(postgres_admin, name)
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _sql(url: str, query: str, *args: object) -> list[tuple]:
    with contextlib.closing(psycopg2.connect(_libpq(url))) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        return cur.fetchall()


@pytest.fixture
def dagster_home(tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAGSTER_HOME whose dagster.yaml skewless wrote with the PostgreSQL variable set."""
    home = tmp_path / "dagster_home"
    monkeypatch.setenv(POSTGRES_URL_VARIABLE, postgres_url)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    write_instance_yaml(home)
    return home


# ----------------------------------------------------------------- configuration (no server)


def test_without_the_variable_the_instance_stays_on_sqlite(tmp_path: Path) -> None:
    path = write_instance_yaml(tmp_path / "home", environ={})
    text = path.read_text()
    assert "storage" not in text and "postgres" not in text
    assert text.startswith("telemetry:")


def test_the_storage_block_names_the_variable_not_the_url(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://app:s3cret@db.internal:5432/dagster"
    path = write_instance_yaml(tmp_path / "home", environ={POSTGRES_URL_VARIABLE: url})
    text = path.read_text()
    assert f"postgres_url:\n      env: {POSTGRES_URL_VARIABLE}\n" in text
    assert "s3cret" not in text  # the password stays in the environment
    assert "run_monitoring:" in text and "run_retries:" in text
    # written again: nothing is duplicated
    write_instance_yaml(tmp_path / "home", environ={POSTGRES_URL_VARIABLE: url})
    assert path.read_text() == text


def test_a_storage_the_user_wrote_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    own = "run_storage:\n  module: dagster_postgres.run_storage\n  class: PostgresRunStorage\n"
    (home / "dagster.yaml").write_text(own)
    path = write_instance_yaml(home, environ={POSTGRES_URL_VARIABLE: "postgresql+psycopg2://u@h:5432/d"})
    assert path.read_text().startswith(own)
    assert "\nstorage:" not in path.read_text()


def test_bad_or_missing_urls_fail_early(tmp_path: Path) -> None:
    # a bare postgresql:// would make SQLAlchemy 2.1 look for psycopg 3: refused, with the fix
    for bare in ("postgresql://u@h:5432/d", "postgres://u@h:5432/d"):
        with pytest.raises(InstanceConfigError, match=r"write postgresql\+psycopg2://u@h:5432/d"):
            write_instance_yaml(tmp_path / "a", environ={POSTGRES_URL_VARIABLE: bare})
    with pytest.raises(InstanceConfigError, match="host and a database"):
        write_instance_yaml(tmp_path / "b", environ={POSTGRES_URL_VARIABLE: "postgresql+psycopg2://u@h:5432"})
    write_instance_yaml(tmp_path / "c", environ={POSTGRES_URL_VARIABLE: "postgresql+psycopg2://u@h:5432/d"})
    with pytest.raises(InstanceConfigError, match="is not set"):
        write_instance_yaml(tmp_path / "c", environ={})


# ----------------------------------------------------------------- a real instance on PostgreSQL


def test_runs_materializations_and_check_results_are_stored_in_postgres(
    tmp_path: Path, dagster_home: Path, postgres_url: str, store_config: StoreConfig
) -> None:
    repo = small_repo(tmp_path / "data", make_events(days=2))
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        result = materialize_days(repo, store_config, instance, DAYS[0], DAYS[-1])
        assert result.success
        run_id = result.run_id
        evaluated = {
            (json.dumps(e.asset_key.path), e.check_name): "SUCCEEDED" if e.passed else "FAILED"
            for e in result.get_asset_check_evaluations()
        }
    # the small repo's events are months old: the online freshness check fails, the others pass
    assert "FAILED" in evaluated.values() and "SUCCEEDED" in evaluated.values()
    # what PostgreSQL holds, read with plain SQL
    assert _sql(postgres_url, "SELECT status FROM runs WHERE run_id = %s", run_id) == [("SUCCESS",)]
    mats = _sql(
        postgres_url,
        "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
        run_id,
        "ASSET_MATERIALIZATION",
    )
    offline_key = json.dumps(["features", "user_stats_v1_offline"])
    assert sorted(p for k, p in mats if k == offline_key) == list(DAYS)
    stored_checks = _sql(
        postgres_url,
        "SELECT asset_key, check_name, execution_status FROM asset_check_executions WHERE run_id = %s",
        run_id,
    )
    stored = {(key, name): status for key, name, status in stored_checks}
    assert {k: stored.get(k) for k in evaluated} == evaluated
    # a new instance (a restarted process) sees the run, the materializations and the checks
    with dg.DagsterInstance.get() as again:
        assert again.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        key = dg.AssetKey(["features", "user_stats_v1_offline"])
        assert set(again.get_materialized_partitions(key)) == set(DAYS)
        for asset_key_json, check_name in evaluated:
            check_key = dg.AssetCheckKey(dg.AssetKey(json.loads(asset_key_json)), check_name)
            records = again.event_log_storage.get_asset_check_execution_history(check_key, limit=10)
            assert records and {r.run_id for r in records} == {run_id}, check_key
            # besides the evaluation, Dagster keeps the per-partition PLANNED rows of a partitioned run
            statuses = {r.status.value for r in records}
            assert evaluated[(asset_key_json, check_name)] in statuses and statuses <= {
                evaluated[(asset_key_json, check_name)],
                "PLANNED",
            }


# ----------------------------------------------------------------- a real restart

LOCATION = "pg_restart"
LOCATION_MODULE = textwrap.dedent(
    """
    # the code location of test_instance_postgres's restart test: built from the environment
    import os
    from pathlib import Path

    from skewless.feature_assets.definitions import build_definitions
    from tests.helpers import landing_repo

    defs = build_definitions(
        landing_repo(Path(os.environ["SKEWLESS_TEST_CLICKS"]), os.environ["SKEWLESS_TEST_START"])
    )
    """
)
SENSOR = "landed_clicks_sensor"
PHASE_TIMEOUT_S = 40.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """`dagster-daemon run` and `dagster-webserver` as separate processes (what a deployment
    runs), each in its own process group so stopping it also stops its code server and runs."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp, self.env = tmp, env
        self.workspace = tmp / "workspace.yaml"
        self.port = _free_port()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.starts = 0

    def start(self) -> None:
        bin_dir = Path(sys.executable).parent
        self.starts += 1
        commands = {
            "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", str(self.workspace)],
            "webserver": [
                str(bin_dir / "dagster-webserver"),
                *("-w", str(self.workspace), "-h", "127.0.0.1", "-p", str(self.port)),
            ],
        }
        for name, command in commands.items():
            with (self.tmp / f"{name}-{self.starts}.log").open("wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=self.env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def stop(self) -> None:
        """SIGINT each group, SIGKILL what is left after 20 s: nothing outlives the test."""
        for proc in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.processes = []

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.tmp.glob("*.log"))
        )

    def graphql(self, query: str, variables: dict[str, object] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["data"]

    def wait_for(self, what: str, probe: Callable[[], T | None]) -> T:
        """Poll `probe` until it returns something truthy; fail with the logs after the timeout."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args[0]} exited with {proc.returncode}\n{self.logs()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, KeyError, TypeError):
                found = probe()
                if found:
                    return found
            time.sleep(0.5)
        pytest.fail(f"{what}: not after {PHASE_TIMEOUT_S} s\n{self.logs()}")


def _sensor_cursor(instance: dg.DagsterInstance) -> str | None:
    from dagster._core.scheduler.instigation import InstigatorType

    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == SENSOR and state.instigator_data is not None:
            return state.instigator_data.cursor  # type: ignore[union-attr]
    return None


_RUNS = "{ runsOrError { ... on Runs { results { runId status jobName } } } }"
_CHECKS = """
query($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 10) { runId status }
}
"""
_LOADED = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"


def _location_loaded(deployment: Deployment) -> bool:
    entries = deployment.graphql(_LOADED)["workspaceOrError"]["locationEntries"]
    return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)


@pytest.mark.timeout(180)
def test_cursor_runs_and_checks_survive_a_restart_of_daemon_and_webserver(
    tmp_path: Path, dagster_home: Path, postgres_url: str, store_config: StoreConfig
) -> None:
    """Session 1: the daemon ticks the landing sensor, whose first cursor lists the files
    already there. Both processes stop. A file lands. Session 2: the restarted daemon requests
    a run for exactly the new file, which it can only know from the stored cursor (a lost
    cursor makes the first tick adopt every file and request nothing); the restarted webserver
    lists the run history and the check results recorded before the restart."""
    started = time.monotonic()
    now = datetime.now(UTC).replace(microsecond=0)
    folder = tmp_path / "clicks"
    folder.mkdir()
    clicks_frame(
        [(1, "a", 1.0, now - timedelta(days=1)), (2, "b", 2.0, now - timedelta(days=1))]
    ).write_parquet(folder / "part-000.parquet")
    start_date = (now - timedelta(days=2)).date().isoformat()
    (tmp_path / "location.py").write_text(LOCATION_MODULE)
    # the processes see only what a deployment would set: no SKEWLESS_/DAGSTER_ leaks from here
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SKEWLESS_", "DAGSTER_"))},
        "DAGSTER_HOME": str(dagster_home),
        POSTGRES_URL_VARIABLE: postgres_url,
        "SKEWLESS_HOME": str(tmp_path / "state"),
        "SKEWLESS_OFFLINE_ROOT": store_config.offline_root,
        "SKEWLESS_REDIS_URL": str(store_config.redis_url),
        "SKEWLESS_KEY_PREFIX": store_config.key_prefix,
        "SKEWLESS_TEST_CLICKS": str(folder),
        "SKEWLESS_TEST_START": start_date,
        "PYTHONPATH": str(ROOT),
    }
    deployment = Deployment(tmp_path, env)
    deployment.workspace.write_text(
        "load_from:\n  - python_file:\n"
        f"      relative_path: {tmp_path / 'location.py'}\n"
        f"      location_name: {LOCATION}\n"
        f"      working_directory: {ROOT}\n"
    )
    repo = landing_repo(folder, start_date)
    first_day, last_day = start_date, (now - timedelta(days=1)).date().isoformat()
    with dg.DagsterInstance.get() as instance:
        # history before the restart: a backfill run with its asset check results
        backfill = materialize_days(repo, store_config, instance, first_day, last_day)
        assert backfill.success
        checks = {(tuple(e.asset_key.path), e.check_name) for e in backfill.get_asset_check_evaluations()}
        assert checks
        try:
            deployment.start()
            cursor = deployment.wait_for(
                "the landing sensor's first cursor", lambda: _sensor_cursor(instance)
            )
            assert json.loads(cursor) == [str(folder / "part-000.parquet")]
            deployment.wait_for("the webserver", lambda: _location_loaded(deployment))
            deployment.stop()
            # a new instance (another process would do the same) reads the cursor from PostgreSQL
            with dg.DagsterInstance.get() as fresh:
                assert _sensor_cursor(fresh) == cursor

            clicks_frame([(1, "c", 5.0, now - timedelta(minutes=5))]).write_parquet(
                folder / "part-001.parquet"
            )
            deployment.start()

            def landed_run() -> dg.DagsterRun | None:
                runs = instance.get_runs(dg.RunsFilter(job_name="landed_clicks"))
                return runs[0] if runs and runs[0].is_finished else None

            run = deployment.wait_for("the run for the landed file", landed_run)
            assert run.status == dg.DagsterRunStatus.SUCCESS, deployment.logs()
            assert run.tags.get("dagster/sensor_name") == SENSOR
            assert run.run_config["ops"]["apply_clicks_files"]["config"]["files"] == [
                str(folder / "part-001.parquet")
            ]
            assert len(instance.get_runs(dg.RunsFilter(job_name="landed_clicks"))) == 1
            assert json.loads(_sensor_cursor(instance) or "[]") == sorted(
                str(folder / f"part-00{i}.parquet") for i in (0, 1)
            )
            # the restarted webserver shows the history from before and after the restart
            deployment.wait_for("the webserver", lambda: _location_loaded(deployment))
            runs = {r["runId"]: r for r in deployment.graphql(_RUNS)["runsOrError"]["results"]}
            assert runs[backfill.run_id]["status"] == "SUCCESS"
            assert runs[run.run_id]["status"] == "SUCCESS" and runs[run.run_id]["jobName"] == "landed_clicks"
            for path, name in checks:
                executions = deployment.graphql(_CHECKS, {"key": {"path": list(path)}, "name": name})
                assert backfill.run_id in {e["runId"] for e in executions["assetCheckExecutions"]}, name
        finally:
            deployment.stop()
    # the runs live in PostgreSQL, not in files under DAGSTER_HOME
    assert {r for (r,) in _sql(postgres_url, "SELECT run_id FROM runs")} >= {backfill.run_id, run.run_id}
    assert not list(dagster_home.glob("**/*.db"))
    print(f"restart test took {time.monotonic() - started:.1f} s")


def test_the_documented_dagster_yaml_opens_an_instance_on_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/dagster.postgres.yaml is what skewless writes, and it works as it stands."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "docs" / "dagster.postgres.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv(POSTGRES_URL_VARIABLE, postgres_url)
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
    tables = {t for (t,) in _sql(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "event_logs", "asset_check_executions", "instigators"} <= tables
    # what write_instance_yaml produces has the same top-level blocks
    written = write_instance_yaml(tmp_path / "written").read_text()
    documented = (ROOT / "docs" / "dagster.postgres.yaml").read_text()
    assert _top_level(written) == _top_level(documented)


def _top_level(text: str) -> set[str]:
    return {line.split(":")[0] for line in text.splitlines() if line and line[0] not in " #"}
