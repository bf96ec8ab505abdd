"""Dagster resources wrapping the offline and online stores.

Configuration lives here (what Dagster shows and lets a launchpad override); behaviour lives
in `skewless.storage`, which the client uses directly without Dagster.
"""

from __future__ import annotations

import contextlib

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from skewless.config import StoreConfig
from skewless.storage.offline import OfflineStore, open_offline_store
from skewless.storage.online import OnlineStore, open_online_store


class OfflineStoreResource(ConfigurableResource):
    """The Parquet offline store rooted at `root`: a local folder or `s3://bucket/prefix`
    (`open_offline_store` picks the backend; credentials from the AWS variables).
    `state_dir` is where the encryption keys of pii features are found (`storage.keys`)."""

    root: str
    state_dir: str | None = None

    def setup_for_execution(self, context: InitResourceContext) -> None:
        # every run that touches the stores names its process, so a run killed with -9 (or by
        # the OOM killer) can be marked failed instead of showing "Started" for ever
        run = context.dagster_run
        if context.instance is not None and run is not None and run.run_id:
            from skewless.sensors.dead_runs import record_run_process

            # an ephemeral instance without the run stored: nothing to mark
            with contextlib.suppress(Exception):
                record_run_process(context.instance, run.run_id, run.tags)

    def store(self) -> OfflineStore:
        return open_offline_store(StoreConfig(self.root, None, self.state_dir or "", key_prefix=""))


class OnlineStoreResource(ConfigurableResource):
    """The Redis online store; `redis_url=None` starts the embedded Redis in `state_dir`."""

    state_dir: str
    redis_url: str | None = None
    key_prefix: str = "skewless"

    _store: OnlineStore | None = PrivateAttr(default=None)

    def store(self) -> OnlineStore:
        if self._store is None:
            self._store = open_online_store(StoreConfig("", self.redis_url, self.state_dir, self.key_prefix))
        return self._store

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._store is not None:
            self._store.close()
