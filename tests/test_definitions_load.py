"""The example code location loads the way `dagster dev -w workspace.yaml` loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def test_workspace_code_location_validates(tmp_path: Path) -> None:
    env = {**os.environ, "SKEWLESS_HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation successful for code location card_fraud" in result.stderr + result.stdout


def test_example_definitions_shape() -> None:
    from examples.card_fraud.definitions import defs

    keys = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    for group, version in [
        ("user_last_txn", 1),
        ("user_last_txn", 2),
        ("user_profile", 1),
        ("merchant_risk", 1),
        ("user_merchant_last_txn", 1),
    ]:
        offline = keys[f"features/{group}/v{version}"]
        online = keys[f"online/{group}/v{version}"]
        assert offline.partitions_def is not None and online.partitions_def is not None
        assert {"polars", "parquet"} <= set(offline.kinds) and "redis" in online.kinds
        assert offline.owners and offline.description
        assert "dagster/column_schema" in offline.metadata
        assert dg.AssetKey(["features", group, f"v{version}"]) in {d.asset_key for d in online.deps}
    assert keys["features/user_last_txn/v2"].tags["pii"] == ""
    assert {"sources/transactions", "sources/user_profiles", "sources/merchant_scores"} <= set(keys)
    job = defs.resolve_job_def("daily_features")
    assert job.partitions_def is not None
    schedule = defs.resolve_schedule_def("daily_features_schedule")
    assert schedule.cron_schedule == "30 0 * * *"
