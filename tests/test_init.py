"""`skewless init`: a repository of one's own, materialized by the real Dagster CLI and
read back through the skewless CLI (issue 12 item 8). Real processes, nothing mocked; the
embedded Redis the run starts is stopped at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from skewless.errors import DefinitionError
from skewless.scaffold import init_repository
from skewless.storage.embedded_redis import stop_embedded_redis
from tests.helpers import fresh_env

BIN = Path(sys.executable).parent


def _run(
    args: list[str], cwd: Path, env: dict[str, str], ok: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=400, check=False)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_init_materialize_with_dagster_and_read_back(tmp_path: Path) -> None:
    repo = tmp_path / "shop"
    made = _run([str(BIN / "skewless"), "init", str(repo), "--days", "3"], tmp_path, fresh_env())
    assert "created feature repository shop" in made.stdout
    for name in (
        "features.py",
        "definitions.py",
        "sample_data.py",
        "workspace.yaml",
        "skewless.toml",
        ".gitignore",
        "README.md",
        "skewless.lock.json",
    ):
        assert (repo / name).is_file(), name
    assert ".skewless/" in (repo / ".gitignore").read_text()
    assert "python_file" in (repo / "workspace.yaml").read_text()
    command = next(line.strip() for line in made.stdout.splitlines() if "dagster asset materialize" in line)
    assert command == next(
        line
        for line in (repo / "README.md").read_text().splitlines()
        if line.startswith("dagster asset materialize")
    )

    # editing a version that was never materialized: no bump demanded, the entry is rewritten
    features = repo / "features.py"
    features.write_text(
        features.read_text().replace(
            'pl.col("amount").alias("last_amount")', 'pl.col("amount").round(1).alias("last_amount")'
        )
    )
    listed = _run([str(BIN / "skewless"), "list", "features.py"], repo, fresh_env())
    assert "customer_last_order:v1" in listed.stdout

    last_day = command.rsplit("...", 1)[1]
    state = repo / ".skewless"
    env = fresh_env(DAGSTER_HOME=str(state / "dagster"))
    try:
        # the README's command, narrowed to one day: the real Dagster CLI, its own processes
        one_day = command.replace(command.split("--partition-range ")[1], f"{last_day}...{last_day}")
        args = one_day.split()
        args[0] = str(BIN / "dagster")
        args = [a.strip('"') for a in args]
        done = _run(args, repo, env)
        assert "RUN_SUCCESS" in done.stderr + done.stdout
        assert (
            state / "offline" / "customer_last_order" / "v1" / f"date={last_day}" / "data.parquet"
        ).is_file()

        orders = pl.read_parquet(repo / "data" / "orders" / f"date={last_day}" / "orders.parquet")
        latest = (
            orders.sort("ordered_at").group_by("customer_id").last().sort("customer_id").row(0, named=True)
        )
        day_orders = orders.filter(pl.col("customer_id") == latest["customer_id"]).height
        got = _run(
            [
                str(BIN / "skewless"),
                "get",
                "--repo",
                str(features),
                "--service",
                "shop_model:v1",
                "-e",
                f"customer_id={latest['customer_id']}",
                "--compact",
            ],
            tmp_path,  # another folder: the repository's state is found anyway
            fresh_env(),
        )
        assert "never written" not in got.stderr
        (row,) = json.loads(got.stdout)
        assert row["last_amount"] == round(latest["amount"], 1)
        assert row["last_category"] == latest["category"]
        assert row["order_count_7d"] >= day_orders  # a sliding window as of now: this day's orders

        # once materialized, the definition is frozen: another edit needs a version bump
        features.write_text(features.read_text().replace(".round(1)", ".round(2)"))
        refused = _run([str(BIN / "skewless"), "list", "features.py"], repo, fresh_env(), ok=False)
        assert refused.returncode == 1
        assert "feature group 'customer_last_order:v1' changed without a version bump" in refused.stderr
    finally:
        stop_embedded_redis(state)


def test_init_refuses_a_folder_in_use(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    with pytest.raises(DefinitionError, match="exists and is not an empty folder"):
        init_repository(tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep me"
    with pytest.raises(DefinitionError, match="not a usable code location name"):
        init_repository(tmp_path / "my-repo")
