"""Running a job of a code location in this process, as a run the UI files under that location.

`JobDefinition.execute_in_process` makes runs with no code-location origin: Dagster's job
pages and the runs timeline select runs by their repository label (`__repository__@location`)
and origin, so such runs (the demo's) were invisible there. Here the run is created on the
instance with the origin `dagster dev -w workspace.yaml` gives the same job, then executed in
process with the in-process executor — the same work, now shown where a user looks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

REPOSITORY_NAME = "__repository__"  # the repository name Dagster gives a `Definitions` object


def workspace_location(module: str, workspace: str | Path = "workspace.yaml") -> str | None:
    """The `location_name` a workspace file gives a module (None without such an entry)."""
    path = Path(workspace)
    if not path.exists():
        return None
    for entry in (yaml.safe_load(path.read_text()) or {}).get("load_from", []) or []:
        spec = entry.get("python_module") if isinstance(entry, dict) else None
        if isinstance(spec, dict) and spec.get("module_name") == module:
            return str(spec.get("location_name") or module)
    return None


def execute_in_location(
    instance: dg.DagsterInstance,
    module: str,
    attribute: str,
    location_name: str,
    job_name: str,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> dg.DagsterRun:
    """Run `job_name` of `module.attribute` (a `Definitions`) in process, filed under
    `location_name`; returns the finished run (check its `status`)."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository
    from dagster._core.execution.api import execute_run
    from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    cwd = os.getcwd()
    repository = ReconstructableRepository.for_module(module, attribute, working_directory=cwd)
    job = repository.get_reconstructable_job(job_name)
    origin = RemoteRepositoryOrigin(
        ManagedGrpcPythonEnvCodeLocationOrigin(
            LoadableTargetOrigin(
                executable_path=sys.executable, module_name=module, attribute=attribute, working_directory=cwd
            ),
            location_name=location_name,
        ),
        REPOSITORY_NAME,
    )
    config = dict(run_config or {})
    if job.get_definition().executor_def.name == dg.multi_or_in_process_executor.name:
        # Dagster's default executor: choose its in-process mode (a configured executor, e.g.
        # SKEWLESS_EXECUTOR=celery, is used as configured)
        config.setdefault("execution", {"config": {"in_process": {}}})
    run = instance.create_run_for_job(
        job_def=job.get_definition(),
        run_config=config,
        tags=dict(tags or {}),
        remote_job_origin=origin.get_job_origin(job_name),
        job_code_origin=job.get_python_origin(),
    )
    execute_run(job, run, instance)
    finished = instance.get_run_by_id(run.run_id)
    assert finished is not None
    return finished
