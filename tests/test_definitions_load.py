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
        offline = keys[f"features/{group}_v{version}_offline"]
        online = keys[f"online/{group}_v{version}_online"]
        assert offline.partitions_def is not None and online.partitions_def is not None
        assert {"polars", "parquet"} <= set(offline.kinds) and "redis" in online.kinds
        assert offline.owners and offline.description
        assert "dagster/column_schema" in offline.metadata
        assert dg.AssetKey(["features", f"{group}_v{version}_offline"]) in {d.asset_key for d in online.deps}
    assert keys["features/user_last_txn_v2_offline"].tags["pii"] == ""
    assert {"sources/transactions", "sources/user_profiles", "sources/merchant_scores"} <= set(keys)
    job = defs.resolve_job_def("daily_features")
    assert job.partitions_def is not None
    schedule = defs.resolve_schedule_def("daily_features_schedule")
    assert schedule.cron_schedule == "30 0 * * *"


def test_every_asset_name_says_what_it_is_and_code_version_is_the_fingerprint() -> None:
    """Issue 12 item 7: no two assets share a graph label (the key's last component), the
    versioned ones end in what they are, and both assets of a group version carry its
    fingerprint as Dagster's code version (so the UI flags partitions of older code)."""
    from examples.card_fraud.definitions import defs
    from skewless import asset_keys
    from skewless.registry.fingerprint import fingerprint
    from skewless.repository import load_repository

    specs = list(defs.resolve_all_asset_specs())
    names = [spec.key.path[-1] for spec in specs]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert not [n for n in names if n.startswith("v") and n[1:].isdigit()]
    by_key = {spec.key: spec for spec in specs}
    repo = load_repository("examples.card_fraud.features")
    for group in repo.groups:
        offline = by_key[dg.AssetKey(["features", f"{group.name}_v{group.version}_offline"])]
        online = by_key[dg.AssetKey(["online", f"{group.name}_v{group.version}_online"])]
        assert offline.code_version == online.code_version == fingerprint(group)
        assert offline.tags["skewless/store"] == "offline" and online.tags["skewless/store"] == "online"
        assert offline.description.startswith(f"Offline store of feature group {group.ref}")
        assert online.description.startswith(f"Online store of feature group {group.ref}")
        assert asset_keys.parse(offline.key.path) == ("features", group.ref, group.name)
    for service in repo.services:
        assert by_key[dg.AssetKey(["services", f"{service.name}_v{service.version}_service"])]
        assert by_key[dg.AssetKey(["served", f"{service.name}_v{service.version}_served_log"])]
        if service.labels is not None:
            name = f"{service.name}_v{service.version}_training_set"
            assert by_key[dg.AssetKey(["training_sets", name])].code_version
