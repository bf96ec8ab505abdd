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


def test_a_failed_step_deletes_the_work_area(home: Path) -> None:
    config = StoreConfig.from_env()
    defs = build_definitions(distributed_repo.repository(), config)
    store = FeatureStore(distributed_repo.repository(), config)
    # the gather cannot write: a file where the training set's folder should be
    blocker = Path(store.offline.training_set_path("scorer", 1)).parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"in the way")
    with dg.instance_for_test() as instance:
        result = run_in_process(defs, instance, 4)
    assert not result.success
    failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failed == ["gather_training_set"]
    assert store.offline.list_keys("_work") == []


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
