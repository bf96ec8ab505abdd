"""`skewless demo` end to end on the embedded default, twice: same result, runs on the instance."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl

from skewless.storage.embedded_redis import stop_embedded_redis

ROOT = Path(__file__).resolve().parents[1]


def run_demo(home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("SKEWLESS_REDIS_URL", "DAGSTER_HOME")}
    env["SKEWLESS_HOME"] = str(home)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "skewless"),
            "demo",
            "--users",
            "300",
            "--merchants",
            "40",
            "--days",
            "3",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stable(output: str) -> str:
    # window values slide with the wall clock by design; everything else must be identical
    output = re.sub(r"windows as of now .*", "", output)
    output = re.sub(r"(user_txn_windows:v1\s+\d+\s+\d+)\s+\d+", r"\1", output)  # state keys expire
    # served vectors and their latency depend on the clock (windows) and on this machine;
    # the skew check has no result yet on the first run
    output = re.sub(r"(?m)^   served.*\n|^ +\S+:v\d+ +\d+ requests .*\n", "", output)
    return re.sub(r"run \S+ succeeded|done in [\d.]+s", "", output)


def test_demo_runs_twice_with_the_same_result(tmp_path: Path) -> None:
    home = tmp_path / "state"
    try:
        first = run_demo(home)
        training = pl.read_parquet(home / "training" / "fraud_model_v1.parquet")
        second = run_demo(home)
        assert stable(first) == stable(second)
        assert pl.read_parquet(home / "training" / "fraud_model_v1.parquet").equals(training)
    finally:
        stop_embedded_redis(home)
    assert "user_last_txn:v2" in first and "online store:  unix://" in first
    assert re.search(r"user_merchant_last_txn:v1\s+3\s+\d+\s+\d+", first)
    assert (home / "offline" / "user_last_txn" / "v2").is_dir()
    assert (home / "redis" / "appendonly.aof").exists()
    # the runs are recorded on the instance in the state folder, so `make ui` shows them
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
        # daily, training sets, views, stream, vector index, the blocked bad delivery, serving logs; x2
        assert len(runs) == 14
        failed = [r for r in runs if not r.is_success]
        assert len(failed) == 2 and all(r.tags.get("skewless/demo") == "bad-delivery" for r in failed)
    assert "BLOCKED merchant_risk:v1: 6 schema violations" in first
    assert "offline partition unchanged: True; Redis unchanged and online asset not run: True" in first
    assert re.search(r"features/merchant_risk_v1_offline +drift ok, expectations ok, schema ok", first)
    assert "merchants most like merchant 1" in first and "indexes/merchant_profile_v1_index" in first
    assert "online_offline_agreement ok" in first and "FAIL" not in first.split("a bad merchant")[0]


def test_demo_runs_on_object_storage_and_a_redis_cluster(tmp_path: Path) -> None:
    """`make demo-scale`: the same demo, configured onto a moto S3 server and a 3-master
    Redis Cluster that examples/scale/run.py starts and stops (TMPDIR is this test's folder,
    so the leak guard sees the cluster's nodes)."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKEWLESS_REDIS_URL", "DAGSTER_HOME")}
    env["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "examples.scale.run", "--users", "300", "--merchants", "40", "--days", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "offline store s3://skewless-demo/offline" in out and "online store redis+cluster://" in out
    agreement = re.findall(r"online/(\S+)_online\s+online_freshness ok, online_offline_agreement ok", out)
    assert len(agreement) == 8, out[-3000:]  # every group version agrees online and offline
    assert "merchants most like merchant 1" in out  # the index on S3, its pushes on the cluster
    assert "BLOCKED merchant_risk:v1" in out and "offline partition unchanged: True" in out
    assert not list(tmp_path.glob("skewless-demo-scale-*")), "the demo's servers folder was not removed"
