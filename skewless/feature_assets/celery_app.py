"""The Celery app skewless's workers run: `celery -A skewless.feature_assets.celery_app worker`.

dagster-celery's own `dagster_celery.app` reads its broker from a generated
`dagster_celery_config` module (what `dagster-celery worker start -y` writes); this one reads
the same variables as the executor of `build_definitions` (`SKEWLESS_CELERY_BROKER`,
`SKEWLESS_CELERY_BACKEND`), so a worker and the runs that send it steps cannot disagree on
the broker. The tasks are dagster-celery's (`execute_plan`: one Dagster step per task), and
the app's settings are the executor's defaults (prefetch 1, queue `dagster`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery


def app_for(broker: str, backend: str | None = None) -> Celery:
    """A Celery app on `broker` (results on `backend`, default the broker) with
    dagster-celery's step task registered: what a worker runs and what pings workers."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    app = make_app(CeleryExecutor.for_cli(broker=broker, backend=backend or broker).app_args())
    create_task(app)
    return app


def __getattr__(name: str) -> Any:
    # `celery -A skewless.feature_assets.celery_app` looks up `app`: built on first access, so
    # importing this module for `app_for` needs no broker in the environment
    if name == "app":
        from skewless.config import ExecutionConfig
        from skewless.errors import DefinitionError

        execution = ExecutionConfig.from_env()
        if not execution.celery_broker:
            raise DefinitionError(
                "a skewless Celery worker needs SKEWLESS_CELERY_BROKER (the broker the runs send "
                "steps to, e.g. redis://127.0.0.1:6379/5)"
            )
        app = app_for(execution.celery_broker, execution.backend)
        globals()["app"] = app
        return app
    raise AttributeError(name)
