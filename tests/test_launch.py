"""Runs the demo makes are filed under the workspace's code location (issue 12 item 6).

Dagster's job page lists a job's runs with the filter below (job name + repository label),
and the timeline groups runs by their origin's location; a run made by `execute_in_process`
has neither, so the demo's runs were invisible there.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from skewless.feature_assets.launch import execute_in_location, workspace_location

MODULE = textwrap.dedent(
    """
    import os
    import dagster as dg

    @dg.asset(partitions_def=dg.DailyPartitionsDefinition("2026-01-01"),
              backfill_policy=dg.BackfillPolicy.single_run())
    def numbers(context: dg.AssetExecutionContext) -> None:
        context.log.info(f"pid {os.getpid()} keys {context.partition_keys}")

    defs = dg.Definitions(assets=[numbers], jobs=[dg.define_asset_job("daily", selection=[numbers])])
    """
)


def test_a_run_is_on_its_job_page_and_ran_every_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "launch_defs.py").write_text(MODULE)
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: launch_defs\n      attribute: defs\n"
        "      working_directory: .\n      location_name: my_location\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert workspace_location("launch_defs") == "my_location"
    assert workspace_location("other") is None
    with dg.instance_for_test() as instance:
        run = execute_in_location(
            instance,
            "launch_defs",
            "defs",
            "my_location",
            "daily",
            tags={
                "dagster/asset_partition_range_start": "2026-01-01",
                "dagster/asset_partition_range_end": "2026-01-03",
            },
        )
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.remote_job_origin is not None and run.remote_job_origin.location_name == "my_location"
        on_job_page = instance.get_runs(
            dg.RunsFilter(job_name="daily", tags={REPOSITORY_LABEL_TAG: "__repository__@my_location"})
        )
        assert [r.run_id for r in on_job_page] == [run.run_id]
        records = instance.fetch_materializations(dg.AssetKey("numbers"), limit=10).records
        keys = {r.partition_key for r in records}
        assert keys == {"2026-01-01", "2026-01-02", "2026-01-03"}
        # executed in this process (the in-process executor), not in a subprocess per step
        logs = [e.user_message for e in instance.all_logs(run.run_id) if "keys" in (e.user_message or "")]
        assert logs and f"pid {__import__('os').getpid()}" in logs[0]
    sys.modules.pop("launch_defs", None)
