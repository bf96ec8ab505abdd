"""The distributed training-set job on object storage (moto's S3 server): the work area,
the values between steps and the training set all on S3, the result equal to the client's
in-memory engine on the same store, and nothing left under `_work/`."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import pytest

from skewless import FeatureStore
from skewless.config import StoreConfig
from skewless.feature_assets.definitions import build_definitions
from skewless.storage.offline import S3OfflineStore
from tests import distributed_repo
from tests.contract.offline.conftest import BUCKET
from tests.distributed_repo import JOB, in_memory, materialization, materialize_features


def test_distributed_job_on_s3(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = f"s3://{BUCKET}/dist-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("SKEWLESS_HOME", str(tmp_path))
    monkeypatch.setenv("SKEWLESS_OFFLINE_ROOT", root)
    distributed_repo.write_data()
    config = StoreConfig.from_env()
    materialize_features(config)
    repo = distributed_repo.repository()
    store = FeatureStore(repo, config)
    assert isinstance(store.offline, S3OfflineStore)
    expected = in_memory(store)
    with dg.instance_for_test() as instance:
        result = (
            build_definitions(repo, config)
            .resolve_job_def(JOB)
            .execute_in_process(
                instance=instance, run_config={"ops": {"prepare_training_set": {"config": {"buckets": 3}}}}
            )
        )
        assert result.success
        metadata = materialization(instance).metadata
    assert metadata["path"].value == f"{root}/_training_sets/scorer/v1/data.parquet"
    built = store.offline.read_training_set("scorer", 1)
    assert built is not None and built.equals(expected, null_equal=True)
    assert store.offline.list_keys("_work") == []
    assert not (tmp_path / "offline").exists()  # nothing of the store on the local disk
