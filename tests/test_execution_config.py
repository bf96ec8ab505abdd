"""The execution knobs: partitions per run (the assets' backfill policy) and the executor of
the definitions' jobs, from the environment or in Python; bad values refused by name."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from skewless.config import ExecutionConfig, StoreConfig
from skewless.errors import DefinitionError
from skewless.feature_assets.backfill import run_ranges
from skewless.feature_assets.definitions import build_definitions
from tests.helpers import small_repo


def _policies(defs: dg.Definitions) -> set[int | None]:
    return {
        a.backfill_policy.max_partitions_per_run
        for a in defs.assets or []
        if isinstance(a, dg.AssetsDefinition) and a.backfill_policy is not None
    }


def _config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(str(tmp_path / "offline"), None, str(tmp_path / "state"))


def test_default_keeps_single_run_backfills_and_dagsters_executor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SKEWLESS_EXECUTOR", "SKEWLESS_PARTITIONS_PER_RUN", "SKEWLESS_CELERY_BROKER"):
        monkeypatch.delenv(name, raising=False)
    defs = build_definitions(small_repo(tmp_path / "data"), _config(tmp_path))
    assert _policies(defs) == {None}  # BackfillPolicy.single_run()
    job = defs.resolve_job_def("daily_features")
    assert job.executor_def.name == dg.multi_or_in_process_executor.name


def test_partitions_per_run_and_executor_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_PARTITIONS_PER_RUN", "7")
    monkeypatch.setenv("SKEWLESS_EXECUTOR", "multiprocess")
    monkeypatch.setenv("SKEWLESS_MAX_CONCURRENT", "2")
    defs = build_definitions(small_repo(tmp_path / "data"), _config(tmp_path))
    assert _policies(defs) == {7}
    job = defs.resolve_job_def("daily_features")
    assert job.executor_def.name == "multiprocess"
    # the streaming jobs keep their own in-process executor
    assert all(
        j.executor_def.name == "in_process"
        for j in defs.resolve_all_job_defs()
        if j.name.startswith("stream_")
    )


def test_celery_executor_names_the_broker_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKEWLESS_EXECUTOR", "celery")
    monkeypatch.setenv("SKEWLESS_CELERY_BROKER", "redis://:secret@127.0.0.1:6390/3")
    execution = ExecutionConfig.from_env()
    assert execution.backend == "redis://:secret@127.0.0.1:6390/3"
    defs = build_definitions(small_repo(tmp_path / "data"), _config(tmp_path), execution=execution)
    job = defs.resolve_job_def("daily_features")
    assert job.executor_def.name == "celery"
    # read from the variable in each process, not copied into the job (no password in it)
    configured = job.executor_def.config_schema._config_fn({})  # type: ignore[attr-defined]
    assert configured["broker"] == {"env": "SKEWLESS_CELERY_BROKER"}
    assert configured["backend"] == {"env": "SKEWLESS_CELERY_BROKER"}
    # given in Python (not from the variable), the value itself
    direct = ExecutionConfig(executor="celery", celery_broker="redis://127.0.0.1:6391/0")
    job = build_definitions(
        small_repo(tmp_path / "data"), _config(tmp_path), execution=direct
    ).resolve_job_def("daily_features")
    assert job.executor_def.config_schema._config_fn({})["broker"] == "redis://127.0.0.1:6391/0"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SKEWLESS_EXECUTOR": "spark"}, "SKEWLESS_EXECUTOR='spark' is not an executor"),
        ({"SKEWLESS_EXECUTOR": "celery"}, "needs SKEWLESS_CELERY_BROKER"),
        ({"SKEWLESS_PARTITIONS_PER_RUN": "ten"}, "SKEWLESS_PARTITIONS_PER_RUN='ten' is not a whole number"),
        ({"SKEWLESS_PARTITIONS_PER_RUN": "-1"}, "must be 0 or more"),
    ],
)
def test_bad_execution_settings_are_refused_by_name(
    env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SKEWLESS_EXECUTOR", "SKEWLESS_PARTITIONS_PER_RUN", "SKEWLESS_CELERY_BROKER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(DefinitionError, match=message.replace("(", r"\(")):
        ExecutionConfig.from_env()


def test_run_ranges_cut_like_multi_run() -> None:
    d = date.fromisoformat
    assert run_ranges(d("2026-03-01"), d("2026-03-05"), 2) == [
        (d("2026-03-01"), d("2026-03-02")),
        (d("2026-03-03"), d("2026-03-04")),
        (d("2026-03-05"), d("2026-03-05")),
    ]
    assert run_ranges(d("2026-03-01"), d("2026-03-05"), 0) == [(d("2026-03-01"), d("2026-03-05"))]
