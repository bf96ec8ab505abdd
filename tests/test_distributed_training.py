"""The distributed training set (issue 14 item 3): the partitioned engine's buckets as steps
of a Dagster job, its work area on the offline store. Real Dagster instances, real files.

Every run is compared with the client's in-memory engine on the same inputs
(`tests/distributed_repo.py`: a row group, a two-key group, a window group; labels with
repeated rows, unknown entities and times before any event).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from skewless import FeatureStore
from skewless.asset_keys import training_set_key
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from skewless.feature_assets.distributed_training import distributed_job_name, run_distributed_training_set
from tests import distributed_repo
from tests.distributed_repo import JOB, in_memory, materialization, materialize_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder with the data and the partitions, built once for the module."""
    folder = tmp_path_factory.mktemp("distributed-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKEWLESS_HOME", str(folder))
        patch.delenv("SKEWLESS_OFFLINE_ROOT", raising=False)
        distributed_repo.write_data()
        materialize_features(StoreConfig.from_env())
    return folder


@pytest.fixture
def home(materialized: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the materialized state folder of the test's own (tests change it)."""
    folder = tmp_path / "state"
    shutil.copytree(materialized, folder)
    monkeypatch.setenv("SKEWLESS_HOME", str(folder))
    monkeypatch.delenv("SKEWLESS_OFFLINE_ROOT", raising=False)
    return folder


def run_in_process(
    defs: dg.Definitions, instance: dg.DagsterInstance, buckets: int
) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(JOB).execute_in_process(
        instance=instance,
        run_config={"ops": {"prepare_training_set": {"config": {"buckets": buckets}}}},
        raise_on_error=False,
    )


def test_job_matches_the_memory_engine_and_cleans_up(home: Path) -> None:
    repo = distributed_repo.repository()
    config = StoreConfig.from_env()
    defs = build_definitions(repo, config)
    store = FeatureStore(repo, config)
    expected = in_memory(store)
    assert expected.height == 220 and expected.is_duplicated().any()  # repeated label rows
    assert distributed_job_name(repo.services[0]) == JOB
    with dg.instance_for_test() as instance:
        # 3 buckets, then 16: more buckets than users (15), so some get no labels
        for buckets in (3, 16):
            result = run_in_process(defs, instance, buckets)
            assert result.success
            joined = result.output_for_node("join_training_set_bucket")  # mapping key -> value
            assert sorted(joined, key=int) == [str(b) for b in range(buckets)]
            if buckets > 15:  # some bucket holds no label of a one-key group: joined, not failed
                assert min(v["joined"] for v in joined.values()) < 3
            built = store.offline.read_training_set("scorer", 1)
            assert built is not None and built.equals(expected, null_equal=True), buckets
            assert store.offline.list_keys("_work") == []  # the work area is gone
            metadata = materialization(instance).metadata
            assert metadata["engine"].value == "distributed"
            assert metadata["buckets"].value == buckets
            assert metadata["dagster/row_count"].value == expected.height
            assert metadata["path"].value == str(store.offline.training_set_path("scorer", 1))
            assert [c.name for c in metadata["dagster/column_schema"].value.columns] == expected.columns
            assert "dagster/column_lineage" in metadata
        # the default asset still builds it in one step, to the same frame
        asset = dg.materialize(
            list(defs.assets or []),
            selection=dg.AssetSelection.assets(training_set_key(repo.services[0])),
            resources=defs.resources,
            instance=instance,
        )
        assert asset.success
        assert materialization(instance).metadata["engine"].value == "memory"
        assert store.offline.read_training_set("scorer", 1).equals(expected, null_equal=True)
        # default bucket count: the partitioned engine's estimate (at least 2)
        result = defs.resolve_job_def(JOB).execute_in_process(instance=instance)
        assert result.success and materialization(instance).metadata["buckets"].value >= 2


def test_a_failed_run_keeps_its_area_and_reexecution_from_failure_completes(home: Path) -> None:
    """The gather fails (a file where the training set's folder should be); the work area
    stays, and Dagster's re-execution from failure runs only the gather, on the parent's
    bucket results, then deletes the area."""
    config = StoreConfig.from_env()
    store = FeatureStore(distributed_repo.repository(), config)
    blocker = Path(store.offline.training_set_path("scorer", 1)).parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"in the way")
    job = dg.reconstructable(distributed_repo.distributed_job)
    run_config = {
        "execution": {"config": {"in_process": {}}},
        "ops": {"prepare_training_set": {"config": {"buckets": 4}}},
    }
    with dg.instance_for_test() as instance:
        with dg.execute_job(job, instance, run_config=run_config) as failed:
            assert not failed.success
            failed_steps = [e.step_key for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
            parent = failed.run_id
        assert failed_steps == ["gather_training_set"]
        assert {key.split("/")[1] for key in store.offline.list_keys("_work")} == {parent}
        blocker.unlink()
        options = dg.ReexecutionOptions.from_failure(parent, instance)
        with dg.execute_job(job, instance, reexecution_options=options) as resumed:
            assert resumed.success
            started = [e.step_key for e in resumed.all_events if e.event_type_value == "STEP_START"]
        assert started == ["gather_training_set"]
    built = store.offline.read_training_set("scorer", 1)
    assert built is not None and built.equals(in_memory(store), null_equal=True)
    assert store.offline.list_keys("_work") == []


def test_stale_work_areas_are_swept_and_live_ones_kept(home: Path) -> None:
    """`sweep_work_areas` against a real instance's run records and real files: what no
    run will read again goes, what a run (or a re-execution of it) may still read stays;
    the job's first step sweeps."""
    import json
    from datetime import UTC, datetime, timedelta

    from skewless.feature_assets.distributed_training import sweep_work_areas
    from skewless.storage.offline_layout import work_key

    store = FeatureStore(distributed_repo.repository(), StoreConfig.from_env()).offline
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=2), now - timedelta(minutes=5)
    status = dg.DagsterRunStatus
    cases = {
        # run id: (run status in the instance or None, area created at or None, swept?)
        "unknown-old": (None, old, True),
        "unknown-new": (None, recent, False),
        "unknown-unmarked": (None, None, False),
        "failed-old": (status.FAILURE, old, True),
        "failed-new": (status.FAILURE, recent, False),
        "failed-unmarked": (status.FAILURE, None, True),
        "started-old": (status.STARTED, old, False),
        "canceling-old": (status.CANCELING, old, False),
        "succeeded-new": (status.SUCCESS, recent, True),
        "canceled-new": (status.CANCELED, recent, True),
        "resumed-old": (status.FAILURE, old, False),  # its re-execution is running
    }
    with dg.instance_for_test() as instance:
        for run_id, (state, created, _) in cases.items():
            if state is not None:
                instance.add_run(dg.DagsterRun(job_name=JOB, run_id=run_id, status=state))
            prefix = work_key(run_id)
            store.write(f"{prefix}/buckets/0/labels/part.arrow", b"x")
            if created is not None:
                store.write(
                    f"{prefix}/started.json", json.dumps({"created_at": created.isoformat()}).encode()
                )
        instance.add_run(
            dg.DagsterRun(
                job_name=JOB,
                run_id="child",
                status=status.STARTED,
                tags={"dagster/root_run_id": "resumed-old"},
            )
        )
        swept = sweep_work_areas(store, instance, "current", timedelta(hours=24), now=now)
        assert sorted(swept) == sorted(r for r, (_, _, gone) in cases.items() if gone)
        left = {key.split("/")[1] for key in store.list_keys("_work")}
        assert left == {r for r, (_, _, gone) in cases.items() if not gone}
        # the job sweeps before it scatters: an old failed area goes, live ones stay
        instance.add_run(dg.DagsterRun(job_name=JOB, run_id="failed-long-ago", status=status.FAILURE))
        store.write(
            f"{work_key('failed-long-ago')}/started.json",
            json.dumps({"created_at": old.isoformat()}).encode(),
        )
        defs = build_definitions(distributed_repo.repository(), StoreConfig.from_env())
        assert run_in_process(defs, instance, 2).success
        assert {key.split("/")[1] for key in store.list_keys("_work")} == left


def test_no_label_rows(home: Path) -> None:
    folder = distributed_repo.data_dir()
    labels = pl.read_parquet(folder / "labels.parquet")
    labels.head(0).write_parquet(folder / "labels.parquet")
    repo = distributed_repo.repository()
    config = StoreConfig.from_env()
    store = FeatureStore(repo, config)
    expected = in_memory(store)
    assert expected.height == 0
    with dg.instance_for_test() as instance:
        assert run_in_process(build_definitions(repo, config), instance, 0).success
    built = store.offline.read_training_set("scorer", 1)
    assert built is not None and built.equals(expected) and built.schema == expected.schema
    assert store.offline.list_keys("_work") == []


def test_multiprocess_run_spreads_buckets_over_processes(home: Path) -> None:
    """A launched run (`dagster job execute`) on the multiprocess executor: each step in a
    process of its own, the output the same as in memory."""
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    result = run_distributed_training_set(
        "tests.distributed_repo",
        "scorer_v1",
        dagster_home,
        executor="multiprocess",
        workers=2,
        buckets=2,
        env={"SKEWLESS_HOME": str(home)},
        working_directory=ROOT,
        timeout=120,
    )
    assert result.ok, result.log
    assert sorted(result.workers) == [
        "gather_training_set",
        "join_training_set_bucket[0]",
        "join_training_set_bucket[1]",
        "prepare_training_set",
    ]
    assert len(set(result.pids.values())) == 4 and os.getpid() not in result.pids.values()
    assert result.buckets == 2 and result.rows == 220 and result.seconds > 0
    store = FeatureStore(distributed_repo.repository(), StoreConfig.from_env())
    assert result.path == str(store.offline.training_set_path("scorer", 1))
    built = store.offline.read_training_set("scorer", 1)
    assert built is not None and built.equals(in_memory(store), null_equal=True)
    assert store.offline.list_keys("_work") == []
