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
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import polars as pl
import psycopg2
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from skewless.config import StoreConfig
from skewless.sensors.instance import (
    POSTGRES_URL_VARIABLE,
    InstanceConfigError,
    write_instance_yaml,
)
from tests.helpers import make_events, materialize_days, small_repo

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
